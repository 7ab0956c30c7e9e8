//! sentence-transformers' all-MiniLM-L6-v2, a real `BertModel` checkpoint with a real
//! `tokenizer.json`: our tokenizer gives transformers' ids and our encoder its last hidden states
//! within 1e-4 (fixture: `tests/fixtures/minilm/make_minilm_fixture.py`). The model is not in the
//! repository (90 MB) and is never downloaded by a test: this runs where it was fetched once (see
//! the script) into `models/all-MiniLM-L6-v2` or `$LM_TRAIN_MINILM_DIR`, and says it skipped
//! otherwise.

use std::path::PathBuf;

use candle_core::{Device, Tensor};
use lm_models::bert::Bert;
use lm_train::tokenizer::TextTokenizer;

fn model_dir() -> Option<PathBuf> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    std::env::var_os("LM_TRAIN_MINILM_DIR")
        .map(PathBuf::from)
        .into_iter()
        .chain([root.join("models/all-MiniLM-L6-v2")])
        .find(|d| d.join("model.safetensors").exists())
}

#[test]
fn minilm_ids_and_hidden_states_equal_transformers() {
    let Some(dir) = model_dir() else {
        println!(
            "skipped minilm_ids_and_hidden_states_equal_transformers: no all-MiniLM-L6-v2 at \
             models/all-MiniLM-L6-v2 or $LM_TRAIN_MINILM_DIR (tests/fixtures/minilm/make_minilm_fixture.py says how to get it)"
        );
        return;
    };
    let fixtures = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/minilm");
    let reference: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixtures.join("reference.json")).unwrap())
            .unwrap();
    let hidden =
        candle_core::safetensors::load(fixtures.join("reference.safetensors"), &Device::Cpu)
            .unwrap();
    let tok = TextTokenizer::load(&dir.join("tokenizer.json")).unwrap();
    let (model, _, _) = Bert::from_hf_dir(&dir, &Device::Cpu).unwrap();
    for (i, text) in reference["texts"].as_array().unwrap().iter().enumerate() {
        let ids = tok.encode_for_model(text.as_str().unwrap()).unwrap();
        let want: Vec<u32> = reference["input_ids"][i]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u32)
            .collect();
        assert_eq!(ids, want, "ids of text {i}");
        let x = Tensor::new(ids.as_slice(), &Device::Cpu)
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        let got = model
            .encode(&x, None, None, &lm_models::StepContext::EVAL)
            .unwrap()
            .sequence
            .squeeze(0)
            .unwrap();
        let diff: f32 = (got - &hidden[&format!("hidden_{i}")])
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar()
            .unwrap();
        println!("text {i}: max |ours − transformers| = {diff:e}");
        assert!(diff < 1e-4, "text {i}: {diff}");
    }
    // A copy saved by us, for `make_minilm_fixture.py --check-copy DIR` (transformers loads it
    // with no missing or unexpected keys and the same hidden states).
    if let Some(out) = std::env::var_os("LM_TRAIN_MINILM_COPY") {
        let (model, store, _) = Bert::from_hf_dir(&dir, &Device::Cpu).unwrap();
        model
            .save_hf_dir(&store, std::path::Path::new(&out))
            .unwrap();
        std::fs::copy(
            dir.join("tokenizer.json"),
            PathBuf::from(&out).join("tokenizer.json"),
        )
        .unwrap();
    }
}
