//! Properties of every transform, checked with proptest. Statistical checks use 5-sigma binomial
//! bounds: `|k − np| < 5·√(np(1−p))`, false-alarm probability below 1e−6 per check.
#![allow(clippy::needless_range_loop)] // index loops mirror the definitions being checked

use lm_objectives::bart::{
    restore_infilled, text_infilling, BartNoise, InfillingConfig, SpanPlacement,
};
use lm_objectives::mlm::{exact_count, MlmConfig, MlmMasker, Selection};
use lm_objectives::nsp::{next_sentence_pairs, Document, NspConfig};
use lm_objectives::span_corruption::{
    restore_spans, Sentinels, SpanCorruptionConfig, SpanCorruptor,
};
use lm_objectives::{Rng, IGNORE_INDEX};
use proptest::prelude::*;

const V: u32 = 1000;
const SPECIAL: [u32; 4] = [0, 1, 2, 3]; // [PAD] [CLS] [SEP] [MASK]
const MASK: u32 = 3;

fn within_5_sigma(k: u64, n: u64, p: f64) -> bool {
    let mean = n as f64 * p;
    let sd = (n as f64 * p * (1.0 - p)).sqrt();
    (k as f64 - mean).abs() <= 5.0 * sd + 1e-9
}

/// Token sequences with some special tokens sprinkled in.
fn sequence() -> impl Strategy<Value = Vec<u32>> {
    prop::collection::vec(prop_oneof![8 => 4u32..V, 1 => 0u32..3], 1..300)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn mlm_labels_exactly_the_selected_non_special_positions(tokens in sequence(), seed: u64, bernoulli: bool) {
        let cfg = MlmConfig { selection: if bernoulli { Selection::Bernoulli } else { Selection::ExactCount }, ..Default::default() };
        let mut m = MlmMasker::new(cfg, V, MASK, &SPECIAL, seed).unwrap();
        let maskable = tokens.iter().filter(|t| !SPECIAL.contains(t)).count();
        match m.mask(&tokens) {
            Err(_) => prop_assert_eq!(maskable, 0),
            Ok(ex) => {
                let mut selected = 0;
                for i in 0..tokens.len() {
                    if ex.labels[i] == IGNORE_INDEX {
                        prop_assert_eq!(ex.input_ids[i], tokens[i]);
                    } else {
                        selected += 1;
                        prop_assert!(!SPECIAL.contains(&tokens[i]), "special token selected");
                        prop_assert_eq!(ex.labels[i], tokens[i] as i64);
                        prop_assert!(ex.input_ids[i] == MASK || !SPECIAL.contains(&ex.input_ids[i]));
                    }
                }
                if !bernoulli {
                    prop_assert_eq!(selected, exact_count(maskable, 0.15));
                    prop_assert_eq!(selected, ((maskable as f64 * 0.15).round() as usize).max(1));
                }
                // Same seed, same output.
                let again = MlmMasker::new(cfg, V, MASK, &SPECIAL, seed).unwrap().mask(&tokens).unwrap();
                prop_assert_eq!(again, ex);
            }
        }
    }

    #[test]
    fn mlm_rates_fall_within_5_sigma(seed: u64, rate in 0.05f64..0.5) {
        let cfg = MlmConfig { rate, selection: Selection::Bernoulli, ..Default::default() };
        let mut m = MlmMasker::new(cfg, V, MASK, &SPECIAL, seed).unwrap();
        let mut rng = Rng::seed_from_u64(seed ^ 1);
        let (mut n, mut sel, mut masked, mut random, mut kept) = (0u64, 0u64, 0u64, 0u64, 0u64);
        for _ in 0..40 {
            let tokens: Vec<u32> = (0..256).map(|_| 4 + rng.below((V - 4) as u64) as u32).collect();
            let ex = m.mask(&tokens).unwrap();
            n += tokens.len() as u64;
            for i in 0..tokens.len() {
                if ex.labels[i] == IGNORE_INDEX { continue; }
                sel += 1;
                if ex.input_ids[i] == MASK { masked += 1 } else if ex.input_ids[i] == tokens[i] { kept += 1 } else { random += 1 }
            }
        }
        prop_assert!(within_5_sigma(sel, n, rate), "selected {sel} of {n} at rate {rate}");
        // A random replacement equals the original with probability 1/(V − 4).
        let same = 1.0 / (V - 4) as f64;
        prop_assert!(within_5_sigma(masked, sel, 0.8), "masked {masked} of {sel}");
        prop_assert!(within_5_sigma(random, sel, 0.1 * (1.0 - same)), "random {random} of {sel}");
        prop_assert!(within_5_sigma(kept, sel, 0.1 + 0.1 * same), "kept {kept} of {sel}");
    }

    #[test]
    fn whole_word_masking_takes_words_whole(seed: u64, word_lens in prop::collection::vec(1usize..4, 2..60)) {
        let mut tokens = vec![1u32];
        let mut words = vec![None];
        for (w, &l) in word_lens.iter().enumerate() {
            for _ in 0..l { tokens.push(4 + (tokens.len() as u32 % 900)); words.push(Some(w as u32)); }
        }
        tokens.push(2);
        words.push(None);
        let mut m = MlmMasker::new(MlmConfig::default(), V, MASK, &SPECIAL, seed).unwrap();
        let ex = m.mask_whole_words(&tokens, &words).unwrap();
        for w in 0..word_lens.len() as u32 {
            let sel: Vec<bool> = (0..tokens.len()).filter(|&i| words[i] == Some(w)).map(|i| ex.labels[i] != IGNORE_INDEX).collect();
            prop_assert!(sel.iter().all(|&s| s) || sel.iter().all(|&s| !s), "word {w} split");
        }
        let total = ex.labels.iter().filter(|&&l| l != IGNORE_INDEX).count();
        let budget = exact_count(tokens.len() - 2, 0.15);
        prop_assert!(total >= 1 && (total <= budget || word_lens.contains(&total)));
    }

    #[test]
    fn nsp_negatives_come_from_other_documents(seed: u64, n_docs in 2usize..12) {
        let mut rng = Rng::seed_from_u64(seed);
        let docs: Vec<Document> = (0..n_docs).map(|d| (0..1 + rng.below(8) as usize)
            .map(|_| (0..1 + rng.below(10) as usize).map(|_| 10 + d as u32).collect()).collect()).collect();
        let cfg = NspConfig { max_len: 24, is_next_prob: 0.5, cls: 1, sep: 2 };
        let ex = next_sentence_pairs(&docs, &cfg, &mut rng).unwrap();
        for e in &ex {
            prop_assert!(e.input_ids.len() <= 24);
            prop_assert_eq!(e.input_ids[0], 1);
            prop_assert_eq!(*e.input_ids.last().unwrap(), 2);
            let sep = e.input_ids.iter().position(|&t| t == 2).unwrap();
            prop_assert!(e.segment_ids[..=sep].iter().all(|&s| s == 0));
            prop_assert!(e.segment_ids[sep + 1..].iter().all(|&s| s == 1));
            // Every token of B carries its document's id (10 + d).
            let b_docs: Vec<u32> = e.input_ids[sep + 1..e.input_ids.len() - 1].to_vec();
            prop_assert!(b_docs.iter().all(|&t| t == 10 + e.doc_b as u32));
            if e.is_next { prop_assert_eq!(e.doc_a, e.doc_b); } else { prop_assert_ne!(e.doc_a, e.doc_b); }
        }
    }

    #[test]
    fn nsp_positives_are_half_within_5_sigma(seed: u64) {
        let mut rng = Rng::seed_from_u64(seed);
        // Long documents of short sentences: a real continuation is always available.
        let docs: Vec<Document> = (0..20).map(|d| (0..60).map(|s| vec![10 + d, 100 + s]).collect()).collect();
        let cfg = NspConfig { max_len: 12, is_next_prob: 0.5, cls: 1, sep: 2 };
        let ex = next_sentence_pairs(&docs, &cfg, &mut rng).unwrap();
        let pos = ex.iter().filter(|e| e.is_next).count() as u64;
        let n = ex.len() as u64;
        // Every example is a fair coin except, at most, the last of each of the 20 documents
        // (no continuation left): pos lies between the bounds for n − 20 and for n coins.
        let sd = |m: u64| 5.0 * (m as f64 * 0.25).sqrt();
        prop_assert!(pos as f64 <= n as f64 * 0.5 + sd(n), "{pos} of {n}");
        prop_assert!(pos as f64 >= (n - 20) as f64 * 0.5 - sd(n - 20), "{pos} of {n}");
    }

    #[test]
    fn span_corruption_roundtrips_with_t5_lengths(len in 2usize..700, density in 0.05f64..0.9, mean in 1.0f64..8.0, seed: u64) {
        let cfg = SpanCorruptionConfig { noise_density: density, mean_span_length: mean };
        let s = Sentinels { first: 31_999, count: 1000, descending: true };
        let tokens: Vec<u32> = (0..len as u32).map(|i| 10 + i % 5000).collect();
        let mut c = SpanCorruptor::new(cfg, s, 1).unwrap();
        let ex = c.corrupt(&tokens, &mut Rng::seed_from_u64(seed)).unwrap();
        prop_assert_eq!(restore_spans(&ex, &s, 1), tokens.clone());
        let (n_noise, n_spans) = cfg.counts(len);
        prop_assert_eq!(n_noise, ((len as f64 * density).round() as usize).clamp(1, len - 1));
        let spans = n_spans.min(len - n_noise).min(n_noise);
        prop_assert_eq!(ex.input_ids.len(), len - n_noise + spans + 1);
        prop_assert_eq!(ex.target_ids.len(), n_noise + spans + 1);
        // Sentinels appear in order <extra_id_0>, <extra_id_1>, … in both.
        let sentinels: Vec<u32> = ex.target_ids.iter().copied().filter(|&t| t > 30_000).collect();
        prop_assert_eq!(sentinels, (0..spans as u32).map(|k| s.id(k)).collect::<Vec<_>>());
        let again = SpanCorruptor::new(cfg, s, 1).unwrap().corrupt(&tokens, &mut Rng::seed_from_u64(seed)).unwrap();
        prop_assert_eq!(again, ex);
    }

    #[test]
    fn span_noise_rate_is_the_density(seed: u64) {
        // The noise count is deterministic; the spans are non-empty and start after non-noise.
        let mut c = SpanCorruptor::new(SpanCorruptionConfig::default(), Sentinels { first: 100, count: 100, descending: false }, 1).unwrap();
        let mask = c.noise_mask(512, &mut Rng::seed_from_u64(seed)).unwrap();
        prop_assert_eq!(mask.iter().filter(|&&m| m).count(), 77);
        prop_assert!(!mask[0]);
        let runs = mask.windows(2).filter(|w| !w[0] && w[1]).count();
        prop_assert_eq!(runs, 26);
    }

    #[test]
    fn bart_infilling_roundtrips(tokens in prop::collection::vec(4u32..V, 1..400), ratio in 0.0f64..0.9, lambda in 0.5f64..6.0, seed: u64) {
        let cfg = InfillingConfig { mask_ratio: ratio, lambda, mask: MASK, placement: SpanPlacement::Exact };
        let ex = text_infilling(&tokens, &cfg, &mut Rng::seed_from_u64(seed)).unwrap();
        prop_assert_eq!(restore_infilled(&ex, MASK), tokens.clone());
        let masked: usize = ex.spans.iter().map(Vec::len).sum();
        prop_assert_eq!(masked, (tokens.len() as f64 * ratio).round() as usize);
        // fairseq's placement: also restorable, never more than its budget, the same for a seed.
        let fs = InfillingConfig { placement: SpanPlacement::Fairseq, ..cfg };
        let ex = text_infilling(&tokens, &fs, &mut Rng::seed_from_u64(seed)).unwrap();
        prop_assert_eq!(restore_infilled(&ex, MASK), tokens.clone());
        let masked: usize = ex.spans.iter().map(Vec::len).sum();
        prop_assert!(masked <= (tokens.len() as f64 * ratio).ceil() as usize);
        prop_assert_eq!(ex.input_ids.iter().filter(|&&t| t == MASK).count(), ex.spans.len());
        prop_assert_eq!(&text_infilling(&tokens, &fs, &mut Rng::seed_from_u64(seed)).unwrap(), &ex);
        let cfg = InfillingConfig { placement: SpanPlacement::Exact, ..cfg };
        let ex = text_infilling(&tokens, &cfg, &mut Rng::seed_from_u64(seed)).unwrap();
        prop_assert_eq!(ex.input_ids.iter().filter(|&&t| t == MASK).count(), ex.spans.len());
        let again = text_infilling(&tokens, &cfg, &mut Rng::seed_from_u64(seed)).unwrap();
        prop_assert_eq!(again, ex);
    }

    #[test]
    fn bart_noise_keeps_the_original_as_target(sents in prop::collection::vec(prop::collection::vec(4u32..V, 1..20), 1..10), seed: u64) {
        let noise = BartNoise { permute_sentences: true, rotate: true, deletion: 0.1, infilling: Some(InfillingConfig { mask_ratio: 0.3, lambda: 3.0, mask: MASK, placement: SpanPlacement::Fairseq }) };
        let ex = noise.apply(&sents, &mut Rng::seed_from_u64(seed)).unwrap();
        prop_assert_eq!(ex.target_ids, sents.concat());
        let plain = BartNoise { permute_sentences: true, ..Default::default() }.apply(&sents, &mut Rng::seed_from_u64(seed)).unwrap();
        let mut a = plain.input_ids.clone(); a.sort_unstable();
        let mut b = sents.concat(); b.sort_unstable();
        prop_assert_eq!(a, b);
    }
}

#[test]
fn bad_inputs_are_typed_errors() {
    assert!(SpanCorruptor::new(
        SpanCorruptionConfig {
            noise_density: 1.0,
            mean_span_length: 3.0
        },
        Sentinels {
            first: 9,
            count: 5,
            descending: true
        },
        1
    )
    .is_err());
    assert!(SpanCorruptor::new(
        SpanCorruptionConfig {
            noise_density: 0.0,
            mean_span_length: 3.0
        },
        Sentinels {
            first: 9,
            count: 5,
            descending: true
        },
        1
    )
    .is_err());
    let mut c = SpanCorruptor::new(
        SpanCorruptionConfig::default(),
        Sentinels {
            first: 9,
            count: 5,
            descending: true,
        },
        1,
    )
    .unwrap();
    assert!(c.corrupt(&[5], &mut Rng::seed_from_u64(0)).is_err());
    assert!(c.corrupt(&[], &mut Rng::seed_from_u64(0)).is_err());
    assert!(text_infilling(
        &[],
        &InfillingConfig {
            mask_ratio: 0.3,
            lambda: 3.0,
            mask: 3,
            placement: SpanPlacement::Exact,
        },
        &mut Rng::seed_from_u64(0)
    )
    .is_err());
    assert!(text_infilling(
        &[5],
        &InfillingConfig {
            mask_ratio: 0.3,
            lambda: -1.0,
            mask: 3,
            placement: SpanPlacement::Exact,
        },
        &mut Rng::seed_from_u64(0)
    )
    .is_err());
    let one_doc: Vec<Document> = vec![vec![vec![5, 6]]];
    let e = next_sentence_pairs(
        &one_doc,
        &NspConfig {
            max_len: 16,
            is_next_prob: 0.5,
            cls: 1,
            sep: 2,
        },
        &mut Rng::seed_from_u64(0),
    )
    .unwrap_err();
    assert!(e.to_string().contains("NSP corpus"), "{e}");
    assert!(lm_objectives::span_corruption::prefix_lm(&[1], 1).is_err());
}
