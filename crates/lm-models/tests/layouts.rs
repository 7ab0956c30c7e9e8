//! Checkpoints load by layout, as transformers' `base_model_prefix` does: a base-model checkpoint
//! (`BertModel`, `GPT2Model`, `BartModel`, `T5Model`: names without the head model's prefix, no
//! heads) loads into our models, and gives the same outputs as the full checkpoint it came from;
//! what the file lacks (a head, a pooler) starts fresh and is named.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Tensor};
use lm_models::bart::{Bart, BartConfig};
use lm_models::bert::{Bert, BertConfig, BertForSequenceClassification};
use lm_models::gpt::{Gpt, GptConfig};
use lm_models::t5::{T5Config, T5};
use lm_models::EncoderDecoder;
use lm_models::{DropoutKey, MatmulPrecision, StepContext};

/// What these tests run under: f32 products, dropout on (the tiny configs have rate 0, so it is
/// the identity) with key 0.
const TRAIN: StepContext = StepContext {
    precision: MatmulPrecision::Highest,
    dropout: Some(DropoutKey {
        key: 0,
        first_row: 0,
    }),
    recompute: lm_models::Recompute::Nothing,
};

/// `src`'s checkpoint rewritten in a base model's layout into `dst`: tensors under `prefix` kept
/// without it, the others (heads, buffers) dropped.
fn as_base_model(src: &Path, dst: &Path, prefix: &str, keep_unprefixed: &[&str]) {
    std::fs::create_dir_all(dst).unwrap();
    std::fs::copy(src.join("config.json"), dst.join("config.json")).unwrap();
    let all = candle_core::safetensors::load(src.join("model.safetensors"), &Device::Cpu).unwrap();
    let base: HashMap<String, Tensor> = all
        .into_iter()
        .filter_map(|(n, t)| match n.strip_prefix(prefix) {
            Some(rest) if !prefix.is_empty() => Some((rest.to_string(), t)),
            _ if keep_unprefixed.iter().any(|k| n.starts_with(k)) => Some((n, t)),
            _ => None,
        })
        .collect();
    candle_core::safetensors::save(&base, dst.join("model.safetensors")).unwrap();
}

fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar()
        .unwrap()
}

#[test]
fn a_bert_base_model_checkpoint_loads_into_every_bert() {
    let tmp = tempfile::tempdir().unwrap();
    let (full, base) = (tmp.path().join("full"), tmp.path().join("base"));
    let (model, store) = Bert::init(&BertConfig::tiny(40), 3, &Device::Cpu).unwrap();
    model.save_hf_dir(&store, &full).unwrap();
    as_base_model(&full, &base, "bert.", &[]);
    let ids = Tensor::new(&[[2u32, 5, 7, 9, 3]], &Device::Cpu).unwrap();
    let want = model.encode(&ids, None, None, &TRAIN).unwrap().sequence;
    let (loaded, _, fresh) = Bert::from_hf_dir(&base, &Device::Cpu).unwrap();
    assert!(
        max_diff(
            &loaded.encode(&ids, None, None, &TRAIN).unwrap().sequence,
            &want
        ) == 0.0
    );
    assert!(
        fresh.iter().all(|n| n.starts_with("cls.")) && !fresh.is_empty(),
        "{fresh:?}"
    );
    // A classifier from the base model equals one from the full checkpoint (same fresh head).
    let (a, _, fa) = BertForSequenceClassification::from_hf_dir(&full, 3, 9, &Device::Cpu).unwrap();
    let (b, _, fb) = BertForSequenceClassification::from_hf_dir(&base, 3, 9, &Device::Cpu).unwrap();
    assert_eq!(fa, fb);
    let (la, lb) = (
        a.forward(&ids, None, None, &TRAIN).unwrap(),
        b.forward(&ids, None, None, &TRAIN).unwrap(),
    );
    assert!(max_diff(&la, &lb) == 0.0);
}

#[test]
fn gpt2_bart_and_t5_base_model_checkpoints_give_the_same_logits() {
    let tmp = tempfile::tempdir().unwrap();
    let dev = &Device::Cpu;
    let ids = Tensor::new(&[[2u32, 5, 7, 9, 3]], dev).unwrap();
    // GPT2Model: no `transformer.` prefix (the LM head is tied to the embedding).
    let (gpt, store) = Gpt::init(&GptConfig::tiny(40), 1, dev).unwrap();
    gpt.save_hf_dir(&store, &tmp.path().join("gpt")).unwrap();
    as_base_model(
        &tmp.path().join("gpt"),
        &tmp.path().join("gpt-base"),
        "transformer.",
        &[],
    );
    let (loaded, _) = Gpt::from_hf_dir(&tmp.path().join("gpt-base"), dev).unwrap();
    assert!(
        max_diff(
            &loaded.forward(&ids, &TRAIN).unwrap(),
            &gpt.forward(&ids, &TRAIN).unwrap()
        ) == 0.0
    );
    // BartModel: no `model.` prefix and no `final_logits_bias` (zero at init: the same logits).
    let (bart, store) = Bart::init(&BartConfig::tiny(40), 1, dev).unwrap();
    bart.save_hf_dir(&store, &tmp.path().join("bart")).unwrap();
    as_base_model(
        &tmp.path().join("bart"),
        &tmp.path().join("bart-base"),
        "model.",
        &[],
    );
    let (loaded, _) = Bart::from_hf_dir(&tmp.path().join("bart-base"), dev).unwrap();
    let dec = Tensor::new(&[[2u32, 5, 7]], dev).unwrap();
    let (a, b) = (
        loaded.forward(&ids, None, &dec, &TRAIN).unwrap(),
        bart.forward(&ids, None, &dec, &TRAIN).unwrap(),
    );
    assert!(max_diff(&a, &b) == 0.0);
    // T5Model of a tied (v1.0) T5: the same names, nothing missing.
    let (t5, store) = T5::init(&T5Config::tiny(40), 1, dev).unwrap();
    t5.save_hf_dir(&store, &tmp.path().join("t5")).unwrap();
    as_base_model(
        &tmp.path().join("t5"),
        &tmp.path().join("t5-base"),
        "",
        &["shared.", "encoder.", "decoder."],
    );
    let (loaded, _) = T5::from_hf_dir(&tmp.path().join("t5-base"), dev).unwrap();
    let (a, b) = (
        loaded.forward(&ids, None, &dec, &TRAIN).unwrap(),
        t5.forward(&ids, None, &dec, &TRAIN).unwrap(),
    );
    assert!(max_diff(&a, &b) == 0.0);
}
