//! lm-objectives on raw token ids, no model and no tokenizer: the training examples of each
//! family's objective for one sequence — causal LM pairs, BERT's 15% / 80-10-10 masking, T5's
//! span corruption and BART's text infilling — each from a seeded generator, so a pipeline that
//! uses them is reproducible.
//!
//! `cargo run --release -p lm-objectives --example noise`

use lm_objectives::bart::{text_infilling, InfillingConfig, SpanPlacement};
use lm_objectives::causal::shift_for_causal_lm;
use lm_objectives::mlm::{MlmConfig, MlmMasker};
use lm_objectives::span_corruption::{Sentinels, SpanCorruptionConfig, SpanCorruptor};
use lm_objectives::Rng;

fn main() -> lm_objectives::Result<()> {
    // A vocabulary of 1 000 ids: 0 pad, 1 end of sequence, 2 [MASK]; T5's sentinels count down
    // from 999 (<extra_id_0> = 999, as T5's vocabulary puts them last).
    let (pad, eos, mask) = (0, 1, 2);
    let tokens: Vec<u32> = (10..50).collect();
    println!("tokens         {tokens:?}");

    // GPT: predict token t+1 from tokens ..=t.
    let causal = shift_for_causal_lm(&tokens)?;
    println!(
        "causal inputs  {:?}\n       targets {:?}",
        causal.input_ids, causal.targets
    );

    // BERT: 15% of positions selected; of those 80% [MASK], 10% a random id, 10% kept.
    let mut masker = MlmMasker::new(MlmConfig::default(), 1000, mask, &[pad, eos, mask], 7)?;
    let mlm = masker.mask(&tokens)?;
    println!(
        "mlm inputs     {:?}\n    labels     {:?}",
        mlm.input_ids, mlm.labels
    );
    let selected = mlm.labels.iter().filter(|&&l| l >= 0).count();
    assert_eq!(selected, 6, "15% of 40 positions"); // exact-count selection: round(0.15 · 40)

    // T5: 15% noise in spans of mean length 3, each replaced by a sentinel.
    let sentinels = Sentinels {
        first: 999,
        count: 100,
        descending: true,
    };
    let cfg = SpanCorruptionConfig {
        noise_density: 0.15,
        mean_span_length: 3.0,
    };
    let mut corruptor = SpanCorruptor::new(cfg, sentinels, eos)?;
    let mut rng = Rng::seed_from_u64(7);
    let t5 = corruptor.corrupt(&tokens, &mut rng)?;
    println!(
        "t5 inputs      {:?}\n   targets     {:?}",
        t5.input_ids, t5.target_ids
    );

    // BART: 30% of tokens in Poisson(3) spans, each span one [MASK].
    let cfg = InfillingConfig {
        mask_ratio: 0.3,
        lambda: 3.0,
        mask,
        placement: SpanPlacement::Exact,
    };
    let bart = text_infilling(&tokens, &cfg, &mut rng)?;
    println!(
        "bart inputs    {:?}\n     spans     {:?}",
        bart.input_ids, bart.spans
    );
    let masked: usize = bart.spans.iter().map(Vec::len).sum();
    assert_eq!(masked, 12, "exact placement masks round(0.3 · 40) tokens");
    Ok(())
}
