//! Batched generation of the encoder-decoders: right-padded inputs with their attention mask give
//! each row what generating it alone gives; `min_new_tokens` keeps the end token away and
//! `forced_eos_token_id` ends a row that reaches `max_new_tokens`, as transformers' logits
//! processors of those names do.

use candle_core::{Device, Tensor};
use lm_models::bart::{Bart, BartConfig};
use lm_models::seq2seq::{EncoderDecoder, GenerationConfig};
use lm_models::t5::{T5Config, T5};
use lm_models::{MatmulPrecision, Sampling};

/// f32 products.
const F32: MatmulPrecision = MatmulPrecision::Highest;
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
        .generate_batch(
            (&ids, Some(&mask)),
            &gen,
            &greedy,
            &mut Rng::seed_from_u64(0),
            F32,
        )
        .unwrap();
    for (r, row) in rows.iter().enumerate() {
        let alone = Tensor::new(*row, dev).unwrap().unsqueeze(0).unwrap();
        let want = model
            .generate(&alone, 6, (&greedy, &mut Rng::seed_from_u64(0)), true, F32)
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
                (&ids, Some(&mask)),
                &strict,
                &hot,
                &mut Rng::seed_from_u64(seed),
                F32,
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

fn fixture(name: &str) -> (std::path::PathBuf, serde_json::Value) {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/models")
        .join(name);
    let text = std::fs::read_to_string(dir.join("generation.json")).unwrap();
    (dir, serde_json::from_str(&text).unwrap())
}

fn rows(v: &serde_json::Value) -> Vec<Vec<u32>> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|r| {
            r.as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_u64().unwrap() as u32)
                .collect()
        })
        .collect()
}

/// Greedy generation of a right-padded batch equals transformers' `generate` on the tiny
/// fixture models (`tests/fixtures/models/make_generation_fixtures.py`), plain, with
/// `min_new_tokens = 3` and a forced end token, and with a forced first token, no repeated
/// bigram and a repetition penalty of 1.5.
#[test]
fn batched_greedy_generation_equals_transformers() {
    let dev = &Device::Cpu;
    for name in ["bart", "t5", "t5v11"] {
        let (dir, reference) = fixture(name);
        let model: Box<dyn EncoderDecoder> = if name == "bart" {
            Box::new(Bart::from_hf_dir(&dir, dev).unwrap().0)
        } else {
            Box::new(T5::from_hf_dir(&dir, dev).unwrap().0)
        };
        let to_tensor = |key: &str| {
            let r = rows(&reference[key]);
            let (b, t) = (r.len(), r[0].len());
            Tensor::from_vec(r.concat(), (b, t), dev).unwrap()
        };
        let (ids, mask) = (to_tensor("input_ids"), to_tensor("attention_mask"));
        let gen = model.generation_config(8);
        let greedy = Sampling::greedy();
        let mut rng = Rng::seed_from_u64(0);
        let got = model
            .generate_batch((&ids, Some(&mask)), &gen, &greedy, &mut rng, F32)
            .unwrap();
        assert_eq!(got, rows(&reference["plain"]), "{name}");
        let strict = GenerationConfig {
            min_new_tokens: 3,
            forced_eos_token_id: Some(gen.eos_token_id),
            ..gen
        };
        let got = model
            .generate_batch((&ids, Some(&mask)), &strict, &greedy, &mut rng, F32)
            .unwrap();
        assert_eq!(got, rows(&reference["min3_forced"]), "{name} min/forced");
        let processed = GenerationConfig {
            forced_bos_token_id: Some(7),
            no_repeat_ngram_size: 2,
            repetition_penalty: 1.5,
            ..model.generation_config(8)
        };
        let got = model
            .generate_batch((&ids, Some(&mask)), &processed, &greedy, &mut rng, F32)
            .unwrap();
        assert_eq!(got, rows(&reference["processors"]), "{name} processors");
    }
    let (dir, reference) = fixture("gpt2");
    let (gpt, _) = lm_models::gpt::Gpt::from_hf_dir(&dir, dev).unwrap();
    let prompt: Vec<u32> = rows(&serde_json::json!([reference["prompt"]])).remove(0);
    let all = gpt
        .generate(
            &prompt,
            8,
            (&Sampling::greedy(), &mut Rng::seed_from_u64(0)),
            F32,
        )
        .unwrap();
    let want: Vec<u32> = rows(&serde_json::json!([reference["generated"]])).remove(0);
    assert_eq!(all[prompt.len()..].to_vec(), want);
    // A left-padded batch: transformers' tokens, and each row what it gives alone.
    let prompts = rows(&reference["batch_prompts"]);
    let batch = gpt
        .generate_batch(
            &prompts,
            8,
            (&Sampling::greedy(), &mut Rng::seed_from_u64(0)),
            (0, None),
            F32,
        )
        .unwrap();
    assert_eq!(batch, rows(&reference["batch_generated"]));
    for (p, row) in prompts.iter().zip(&batch) {
        let alone = gpt
            .generate(p, 8, (&Sampling::greedy(), &mut Rng::seed_from_u64(0)), F32)
            .unwrap();
        assert_eq!(&alone[p.len()..], row.as_slice());
    }
    // With the config's logits processors (no repeated bigram, repetition penalty 1.5, forced
    // end token 3): transformers' tokens, alone and in the left-padded batch.
    let tmp = tempfile::tempdir().unwrap();
    std::fs::copy(
        dir.join("model.safetensors"),
        tmp.path().join("model.safetensors"),
    )
    .unwrap();
    let mut config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("config.json")).unwrap()).unwrap();
    for (k, v) in reference["processors"].as_object().unwrap() {
        config[k] = v.clone();
    }
    std::fs::write(tmp.path().join("config.json"), config.to_string()).unwrap();
    let (gpt, _) = lm_models::gpt::Gpt::from_hf_dir(tmp.path(), dev).unwrap();
    let greedy = (&Sampling::greedy(), &mut Rng::seed_from_u64(0));
    let all = gpt.generate(&prompt, 8, greedy, F32).unwrap();
    let want: Vec<u32> = rows(&serde_json::json!([reference["processors_generated"]])).remove(0);
    assert_eq!(all[prompt.len()..].to_vec(), want);
    let greedy = (&Sampling::greedy(), &mut Rng::seed_from_u64(0));
    let batch = gpt
        .generate_batch(&prompts, 8, greedy, (0, None), F32)
        .unwrap();
    assert_eq!(batch, rows(&reference["processors_batch_generated"]));
}

/// The single-input `generate` is the batch's decoding for one row: a checkpoint whose config
/// carries `forced_eos_token_id` (and `min_length`) ends each row as transformers' `generate`
/// does with those settings (the fixture's `min3_forced`: `…, 94, 2` for BART), with and without
/// the key/value cache. It used to run a loop of its own that ignored the forced end token.
#[test]
fn single_input_generation_follows_the_checkpoints_generation_settings() {
    let dev = &Device::Cpu;
    for name in ["bart", "t5", "t5v11"] {
        let (fixture_dir, reference) = fixture(name);
        let tmp = tempfile::tempdir().unwrap();
        std::fs::copy(
            fixture_dir.join("model.safetensors"),
            tmp.path().join("model.safetensors"),
        )
        .unwrap();
        let mut config: serde_json::Value =
            serde_json::from_slice(&std::fs::read(fixture_dir.join("config.json")).unwrap())
                .unwrap();
        let eos = config["eos_token_id"].clone();
        // transformers' `min_length` counts the decoder start token: 4 is `min_new_tokens = 3`.
        config["forced_eos_token_id"] = eos;
        config["min_length"] = serde_json::json!(4);
        std::fs::write(tmp.path().join("config.json"), config.to_string()).unwrap();
        let model: Box<dyn EncoderDecoder> = if name == "bart" {
            Box::new(Bart::from_hf_dir(tmp.path(), dev).unwrap().0)
        } else {
            Box::new(T5::from_hf_dir(tmp.path(), dev).unwrap().0)
        };
        let gen = model.generation_config(8);
        assert_eq!(
            (gen.min_new_tokens, gen.forced_eos_token_id),
            (3, Some(gen.eos_token_id))
        );
        let inputs = rows(&reference["input_ids"]);
        let masks = rows(&reference["attention_mask"]);
        let want = rows(&reference["min3_forced"]);
        for r in 0..inputs.len() {
            let real: Vec<u32> = inputs[r]
                .iter()
                .zip(&masks[r])
                .filter(|(_, m)| **m == 1)
                .map(|(t, _)| *t)
                .collect();
            let ids = Tensor::new(real.as_slice(), dev)
                .unwrap()
                .unsqueeze(0)
                .unwrap();
            for use_cache in [true, false] {
                let got = model
                    .generate(
                        &ids,
                        8,
                        (&Sampling::greedy(), &mut Rng::seed_from_u64(0)),
                        use_cache,
                        F32,
                    )
                    .unwrap();
                assert_eq!(got, want[r], "{name} row {r} cache {use_cache}");
            }
        }
    }
}
