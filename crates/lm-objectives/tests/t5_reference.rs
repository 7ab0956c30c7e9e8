//! T5 span corruption's noise counts equal T5's own (`random_spans_noise_mask`, which rounds half
//! to even) at every length 2..2048, from the fixture `tests/fixtures/objectives/t5_counts.txt`
//! written by the committed `make_t5_counts.py`.

use lm_objectives::span_corruption::SpanCorruptionConfig;

#[test]
fn noise_counts_equal_t5s_at_every_length() {
    let text = include_str!("../../../tests/fixtures/objectives/t5_counts.txt");
    let mut checked = 0;
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        let num = |i: usize| f[i].parse::<f64>().unwrap();
        let cfg = SpanCorruptionConfig {
            noise_density: num(1),
            mean_span_length: num(2),
        };
        let len = num(0) as usize;
        assert_eq!(
            cfg.counts(len),
            (num(3) as usize, num(4) as usize),
            "length {len}, density {}, mean span {}",
            num(1),
            num(2)
        );
        checked += 1;
    }
    assert_eq!(checked, 2 * 2047);
    // The example by hand: 30 × 0.15 = 4.5 rounds to 4 noise tokens in one span.
    let t5 = SpanCorruptionConfig::default();
    assert_eq!(t5.counts(30), (4, 1));
}
