//! Tiny random HuggingFace models (tests/fixtures/models/make_fixtures.py) load and reproduce
//! transformers' fp32 logits within 1e−4 and loss within 1e−5 relative; load → save round-trips.

use lm_models::StepContext;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use lm_models::EncoderDecoder;
use lm_objectives::loss::{bert_pretraining_loss, cross_entropy, CrossEntropy};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/models")
        .join(name)
}

fn reference(name: &str) -> std::collections::HashMap<String, Tensor> {
    candle_core::safetensors::load(fixture(name).join("reference.safetensors"), &Device::Cpu)
        .unwrap()
}

fn assert_close(got: &Tensor, want: &Tensor, tol: f32, what: &str) {
    assert_eq!(got.dims(), want.dims(), "{what} shape");
    let diff = (got - want)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!(diff <= tol, "{what}: max |diff| = {diff}");
}

fn assert_loss(got: &Tensor, want: &Tensor, what: &str) {
    let (g, w) = (
        got.to_scalar::<f32>().unwrap() as f64,
        want.flatten_all().unwrap().to_vec1::<f32>().unwrap()[0] as f64,
    );
    assert!(((g - w) / w).abs() <= 1e-5, "{what} loss {g} vs {w}");
}

/// Saving a loaded model writes the same tensors, byte for byte, under the same names.
fn assert_roundtrip(name: &str, store: &lm_models::ParamStore) {
    let out = tempfile::tempdir().unwrap();
    store
        .save_safetensors(&out.path().join("model.safetensors"))
        .unwrap();
    let a = std::fs::read(fixture(name).join("model.safetensors")).unwrap();
    let b = std::fs::read(out.path().join("model.safetensors")).unwrap();
    let (a, b) = (
        safetensors::SafeTensors::deserialize(&a).unwrap(),
        safetensors::SafeTensors::deserialize(&b).unwrap(),
    );
    let mut na: Vec<String> = a.names().into_iter().map(String::from).collect();
    let mut nb: Vec<String> = b.names().into_iter().map(String::from).collect();
    na.sort();
    nb.sort();
    assert_eq!(na, nb, "{name}: tensor names");
    for n in &na {
        let (x, y) = (a.tensor(n).unwrap(), b.tensor(n).unwrap());
        assert_eq!(x.shape(), y.shape(), "{name}: {n} shape");
        assert_eq!(x.data(), y.data(), "{name}: {n} bytes");
    }
}

#[test]
fn bert_matches_transformers() {
    let (model, store, fresh) =
        lm_models::bert::Bert::from_hf_dir(&fixture("bert"), &Device::Cpu).unwrap();
    assert!(fresh.is_empty(), "{fresh:?}");
    let r = reference("bert");
    let ids = r["input_ids"].to_dtype(candle_core::DType::U32).unwrap();
    let (mlm, nsp) = model
        .forward(
            &ids,
            Some(
                &r["token_type_ids"]
                    .to_dtype(candle_core::DType::U32)
                    .unwrap(),
            ),
            Some(&r["attention_mask"]),
            &StepContext::EVAL,
        )
        .unwrap();
    assert_close(&mlm, &r["logits"], 1e-4, "bert mlm logits");
    assert_close(&nsp, &r["seq_relationship_logits"], 1e-4, "bert nsp logits");
    let loss = bert_pretraining_loss(&mlm, &r["labels"], &nsp, &r["next_sentence_label"]).unwrap();
    assert_loss(&loss, &r["loss"], "bert");
    assert_roundtrip("bert", &store);
}

#[test]
fn gpt2_matches_transformers() {
    let (model, store) = lm_models::gpt::Gpt::from_hf_dir(&fixture("gpt2"), &Device::Cpu).unwrap();
    let r = reference("gpt2");
    let ids = r["input_ids"].to_dtype(candle_core::DType::U32).unwrap();
    let logits = model.forward(&ids, &StepContext::EVAL).unwrap();
    assert_close(&logits, &r["logits"], 1e-4, "gpt2 logits");
    // GPT2LMHeadModel(labels = input_ids) shifts inside: position i predicts token i + 1.
    let t = ids.dim(1).unwrap();
    let shifted = logits.narrow(1, 0, t - 1).unwrap();
    let targets = r["input_ids"].narrow(1, 1, t - 1).unwrap();
    let loss = cross_entropy(&shifted, &targets, &CrossEntropy::default()).unwrap();
    assert_loss(&loss, &r["loss"], "gpt2");
    assert_roundtrip("gpt2", &store);
}

#[test]
fn bart_matches_transformers() {
    let (model, store) =
        lm_models::bart::Bart::from_hf_dir(&fixture("bart"), &Device::Cpu).unwrap();
    let r = reference("bart");
    let u32s = |t: &Tensor| t.to_dtype(candle_core::DType::U32).unwrap();
    // Decoder inputs from lm-objectives' shift_right must equal transformers' shift_tokens_right.
    let labels: Vec<i64> = r["labels"].flatten_all().unwrap().to_vec1().unwrap();
    let dii = lm_objectives::collate::shift_right(&labels, 7, 2, 1).unwrap();
    assert_eq!(
        dii,
        r["decoder_input_ids"]
            .flatten_all()
            .unwrap()
            .to_dtype(candle_core::DType::U32)
            .unwrap()
            .to_vec1::<u32>()
            .unwrap()
    );
    let logits = model
        .forward(
            &u32s(&r["input_ids"]),
            Some(&r["attention_mask"]),
            &u32s(&r["decoder_input_ids"]),
            &StepContext::EVAL,
        )
        .unwrap();
    assert_close(&logits, &r["logits"], 1e-4, "bart logits");
    let loss = cross_entropy(&logits, &r["labels"], &CrossEntropy::default()).unwrap();
    assert_loss(&loss, &r["loss"], "bart");
    assert_roundtrip("bart", &store);
}

fn t5_case(name: &str) {
    let (model, store) = lm_models::t5::T5::from_hf_dir(&fixture(name), &Device::Cpu).unwrap();
    let r = reference(name);
    let u32s = |t: &Tensor| t.to_dtype(candle_core::DType::U32).unwrap();
    let labels: Vec<i64> = r["labels"].flatten_all().unwrap().to_vec1().unwrap();
    let dii = lm_objectives::collate::shift_right(&labels, 7, 0, 0).unwrap();
    assert_eq!(
        dii,
        r["decoder_input_ids"]
            .flatten_all()
            .unwrap()
            .to_dtype(candle_core::DType::U32)
            .unwrap()
            .to_vec1::<u32>()
            .unwrap()
    );
    let logits = model
        .forward(
            &u32s(&r["input_ids"]),
            Some(&r["attention_mask"]),
            &u32s(&r["decoder_input_ids"]),
            &StepContext::EVAL,
        )
        .unwrap();
    assert_close(&logits, &r["logits"], 1e-4, &format!("{name} logits"));
    let loss = cross_entropy(&logits, &r["labels"], &CrossEntropy::default()).unwrap();
    assert_loss(&loss, &r["loss"], name);
    assert_roundtrip(name, &store);
}

#[test]
fn t5_v1_0_matches_transformers() {
    t5_case("t5");
}

#[test]
fn t5_v1_1_gated_gelu_unscaled_matches_transformers() {
    t5_case("t5v11");
}

/// Writes `<fixture>/roundtrip/` for each family, for `make_fixtures.py` to load with
/// transformers' `from_pretrained` (run by hand: `cargo test -p lm-models -- --ignored`).
#[test]
#[ignore]
fn write_roundtrip_dirs_for_transformers() {
    let d = &Device::Cpu;
    let (m, s) = lm_models::gpt::Gpt::from_hf_dir(&fixture("gpt2"), d).unwrap();
    m.save_hf_dir(&s, &fixture("gpt2").join("roundtrip"))
        .unwrap();
    let (m, s, _) = lm_models::bert::Bert::from_hf_dir(&fixture("bert"), d).unwrap();
    m.save_hf_dir(&s, &fixture("bert").join("roundtrip"))
        .unwrap();
    let (m, s) = lm_models::bart::Bart::from_hf_dir(&fixture("bart"), d).unwrap();
    m.save_hf_dir(&s, &fixture("bart").join("roundtrip"))
        .unwrap();
    for n in ["t5", "t5v11"] {
        let (m, s) = lm_models::t5::T5::from_hf_dir(&fixture(n), d).unwrap();
        m.save_hf_dir(&s, &fixture(n).join("roundtrip")).unwrap();
    }
}

/// Keys our config types do not model survive a load → save: BART's `forced_eos_token_id` and
/// any unknown key come back as they were, for every family.
#[test]
fn unknown_config_keys_survive_a_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let write = |json: serde_json::Value| {
        std::fs::write(dir.path().join("config.json"), json.to_string()).unwrap();
    };
    let mut bart = lm_models::bart::BartConfig::tiny(50).to_hf_json();
    bart["forced_eos_token_id"] = 2.into();
    bart["task_specific_params"] = serde_json::json!({"summarization": {"num_beams": 4}});
    write(bart);
    let cfg: lm_models::bart::BartConfig =
        lm_models::hf::read_config(dir.path(), &["bart"]).unwrap();
    let back = cfg.to_hf_json();
    assert_eq!(back["forced_eos_token_id"], 2);
    assert_eq!(
        back["task_specific_params"]["summarization"]["num_beams"],
        4
    );
    let mut gpt = lm_models::gpt::GptConfig::tiny(50).to_hf_json();
    gpt["n_inner"] = serde_json::Value::Null;
    gpt["custom_key"] = "kept".into();
    write(gpt);
    let cfg: lm_models::gpt::GptConfig = lm_models::hf::read_config(dir.path(), &["gpt2"]).unwrap();
    assert_eq!(cfg.to_hf_json()["custom_key"], "kept");
}
