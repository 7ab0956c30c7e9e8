//! BART's text infilling masks what fairseq's `add_whole_word_mask` masks: on 512-token rows
//! at mask 0.3 and Poisson(3) spans, overlapping spans merge and about 26.8% of the tokens end up
//! masked (the fixture: mean and standard deviation over 20,000 rows of a transcription of
//! fairseq's procedure, `tests/fixtures/objectives/make_fairseq_infilling.py`). The bound is five
//! standard errors of the difference of the two means. The exact placement masks round(0.3·512)
//! = 154 tokens of every row, and whole-word spans never stop inside a word.

use lm_objectives::bart::{
    restore_infilled, text_infilling, text_infilling_words, InfillingConfig, SpanPlacement,
};
use lm_objectives::Rng;

const MASK: u32 = 0;

fn fixture(key: &str) -> f64 {
    let text = include_str!("../../../tests/fixtures/objectives/fairseq_infilling.json");
    let at = text.find(&format!("\"{key}\": ")).expect(key) + key.len() + 4;
    text[at..]
        .split([',', '\n', '}'])
        .next()
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

fn cfg(placement: SpanPlacement) -> InfillingConfig {
    InfillingConfig {
        mask_ratio: 0.3,
        lambda: 3.0,
        mask: MASK,
        placement,
    }
}

#[test]
fn the_masked_fraction_matches_fairseqs() {
    let tokens: Vec<u32> = (1..=512).collect();
    let rows = 4000;
    let mut rng = Rng::seed_from_u64(11);
    let fractions: Vec<f64> = (0..rows)
        .map(|_| {
            let ex = text_infilling(&tokens, &cfg(SpanPlacement::Fairseq), &mut rng).unwrap();
            assert_eq!(restore_infilled(&ex, MASK), tokens);
            ex.spans.iter().map(Vec::len).sum::<usize>() as f64 / 512.0
        })
        .collect();
    let mean = fractions.iter().sum::<f64>() / rows as f64;
    let sd = (fractions.iter().map(|f| (f - mean).powi(2)).sum::<f64>() / (rows - 1) as f64).sqrt();
    let (fs_mean, fs_sd, fs_rows) = (fixture("mean"), fixture("sd"), fixture("rows"));
    let se = (fs_sd * fs_sd / fs_rows + sd * sd / rows as f64).sqrt();
    assert!(
        (mean - fs_mean).abs() < 5.0 * se,
        "mean {mean:.5} vs fairseq {fs_mean:.5} (5 standard errors: {:.5})",
        5.0 * se
    );
    assert!(
        (sd - fs_sd).abs() < 0.1 * fs_sd,
        "sd {sd:.5} vs fairseq {fs_sd:.5}"
    );
    assert!((0.26..0.276).contains(&mean), "{mean}");
}

#[test]
fn the_exact_placement_masks_the_budget_of_every_row() {
    let tokens: Vec<u32> = (1..=512).collect();
    let mut rng = Rng::seed_from_u64(5);
    for _ in 0..50 {
        let ex = text_infilling(&tokens, &cfg(SpanPlacement::Exact), &mut rng).unwrap();
        assert_eq!(ex.spans.iter().map(Vec::len).sum::<usize>(), 154);
    }
}

#[test]
fn whole_word_spans_cover_whole_words() {
    // Words of three tokens: a span starts at a word start and never ends inside a word.
    let tokens: Vec<u32> = (1..=300).collect();
    let starts: Vec<bool> = (0..300).map(|i| i % 3 == 0).collect();
    let mut rng = Rng::seed_from_u64(2);
    for _ in 0..50 {
        let ex =
            text_infilling_words(&tokens, &starts, &cfg(SpanPlacement::Fairseq), &mut rng).unwrap();
        assert_eq!(restore_infilled(&ex, MASK), tokens);
        for span in ex.spans.iter().filter(|s| !s.is_empty()) {
            let (first, len) = ((span[0] - 1) as usize, span.len());
            assert!(starts[first] && len % 3 == 0, "span {span:?}");
        }
        // ceil(0.3 · 100 words) words at most.
        assert!(ex.spans.iter().map(Vec::len).sum::<usize>() <= 90);
    }
}
