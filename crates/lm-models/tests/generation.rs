//! Batched generation of the encoder-decoders: right-padded inputs with their attention mask give
//! each row what generating it alone gives; `min_new_tokens` keeps the end token away and
//! `forced_eos_token_id` ends a row that reaches `max_new_tokens`, as transformers' logits
//! processors of those names do.

use candle_core::{Device, Tensor};
use lm_models::bart::{Bart, BartConfig};
use lm_models::seq2seq::{EncoderDecoder, GenerationConfig};
use lm_models::t5::{T5Config, T5};
use lm_models::Sampling;
use lm_objectives::Rng;

fn check(model: &dyn EncoderDecoder, pad: u32) {
    let dev = &Device::Cpu;
    let rows: [&[u32]; 2] = [&[2, 5, 7, 9, 3], &[4, 6, 3]];
    let padded: Vec<u32> = rows
        .iter()
        .flat_map(|r| r.iter().copied().chain(std::iter::repeat(pad)).take(5))
        .collect();
    let mask: Vec<u32> = rows
        .iter()
        .flat_map(|r| (0..5).map(move |i| u32::from(i < r.len())))
        .collect();
    let ids = Tensor::from_vec(padded, (2, 5), dev).unwrap();
    let mask = Tensor::from_vec(mask, (2, 5), dev).unwrap();
    let gen = model.generation_config(6);
    let greedy = Sampling::greedy();
    let batch = model
        .generate_batch(&ids, Some(&mask), &gen, &greedy, &mut Rng::seed_from_u64(0))
        .unwrap();
    for (r, row) in rows.iter().enumerate() {
        let alone = Tensor::new(*row, dev).unwrap().unsqueeze(0).unwrap();
        let want = model
            .generate(&alone, 6, &greedy, &mut Rng::seed_from_u64(0), true)
            .unwrap();
        assert_eq!(batch[r], want, "row {r}");
    }
    let strict = GenerationConfig {
        max_new_tokens: 5,
        min_new_tokens: 3,
        forced_eos_token_id: Some(gen.eos_token_id),
        ..gen
    };
    // Sampling at a high temperature makes the end token likely early, where it is refused.
    let hot = Sampling {
        temperature: 5.0,
        top_k: None,
        top_p: None,
    };
    for seed in 0..20 {
        let out = model
            .generate_batch(
                &ids,
                Some(&mask),
                &strict,
                &hot,
                &mut Rng::seed_from_u64(seed),
            )
            .unwrap();
        for row in out {
            assert!(row.len() <= 5 && row.len() >= 4, "{row:?}");
            assert!(
                row[..3].iter().all(|&t| t != strict.eos_token_id),
                "{row:?}"
            );
            assert_eq!(row.last(), Some(&strict.eos_token_id), "{row:?}");
        }
    }
}

#[test]
fn bart_and_t5_generate_batches_like_single_rows() {
    let (bart, _) = Bart::init(&BartConfig::tiny(30), 1, &Device::Cpu).unwrap();
    check(&bart, bart.config().pad_token_id);
    let (t5, _) = T5::init(&T5Config::tiny(30), 1, &Device::Cpu).unwrap();
    check(&t5, t5.config().pad_token_id);
}
