//! lm-models with a HuggingFace checkpoint directory (`config.json` + `model.safetensors`, as
//! transformers' `save_pretrained` writes it): load a GPT-2 and generate greedily. Without an
//! argument it loads the tiny random GPT-2 committed for the tests and checks its continuation
//! against the one transformers' `generate` gave (`tests/fixtures/models/gpt2/generation.json`).
//!
//! `cargo run --release -p lm-models --example generate [HF_DIR] [TOKEN_IDS..]`

use std::path::PathBuf;

use candle_core::Device;
use lm_models::gpt::Gpt;
use lm_models::{MatmulPrecision, Sampling};
use lm_objectives::Rng;

fn main() -> anyhow::Result<()> {
    let fixture =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/models/gpt2");
    let mut args = std::env::args().skip(1);
    let dir = args.next().map_or(fixture.clone(), PathBuf::from);
    let prompt: Vec<u32> = args.map(|a| a.parse()).collect::<Result<_, _>>()?;
    let prompt = if prompt.is_empty() {
        vec![5, 9, 14, 23]
    } else {
        prompt
    };

    let (model, params) = Gpt::from_hf_dir(&dir, &Device::Cpu)?;
    println!("{}: {} parameters", dir.display(), params.num_params());
    let mut rng = Rng::seed_from_u64(0); // unused by greedy decoding
    let out = model.generate(
        &prompt,
        8,
        (&Sampling::greedy(), &mut rng),
        MatmulPrecision::Highest,
    )?;
    println!("prompt {prompt:?} -> {out:?}");

    if dir == fixture && prompt == [5, 9, 14, 23] {
        let reference: serde_json::Value =
            serde_json::from_slice(&std::fs::read(fixture.join("generation.json"))?)?;
        let expected: Vec<u32> = serde_json::from_value(reference["generated"].clone())?;
        anyhow::ensure!(
            out.ends_with(&expected),
            "transformers generated {expected:?}"
        );
        println!("equal to transformers' greedy generate");
    }
    Ok(())
}
