//! A fifth family from outside the crate: this file and one registration line are all it takes
//! for a config's `model.family = "bigram"` to train, checkpoint, resume and sample through the
//! same trainer as GPT, BERT, BART and T5.

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use candle_nn::Init;
use lm_models::{MatmulPrecision, ParamStore, Sampling, StepContext};
use lm_objectives::Rng;
use lm_train::choices::ObjectiveKind;
use lm_train::family::{
    Architecture, DecoderStart, FamilySpec, MaskedLmInput, ModelShape, Specials,
};
use lm_train::model::{token_cross_entropy, Batch, CausalLm, Head, LanguageModel};
use lm_train::{Result, Trainer};

/// A bigram model: the logits of the next token are one row of a `[V, V]` table.
const BIGRAM: FamilySpec = FamilySpec {
    name: "bigram",
    hf_model_type: None,
    architecture: Architecture::DecoderOnly,
    default_objective: ObjectiveKind::CausalLm,
    objectives: &[ObjectiveKind::CausalLm],
    masked_lm_input: MaskedLmInput::FullSentences,
    encoder_bos: false,
    decoder_start: DecoderStart::Eos,
    special_tokens: |_| vec![],
    specials: |_| Ok(Specials::default()),
    build,
    load_for_finetune: None,
};

fn build(
    shape: &ModelShape,
    _: &Specials,
    device: &Device,
) -> Result<(Box<dyn LanguageModel>, ParamStore)> {
    let store = ParamStore::new(shape.seed);
    let vb = store.var_builder(DType::F32, device);
    let init = Init::Randn {
        mean: 0.0,
        stdev: 0.02,
    };
    let table = vb
        .get_with_hints((shape.vocab, shape.vocab), "bigram.weight", init)
        .map_err(lm_models::ModelError::from)?;
    Ok((Box::new(Bigram { table }), store))
}

#[derive(Debug)]
struct Bigram {
    table: Tensor,
}

impl Bigram {
    fn logits(&self, ids: &Tensor) -> Result<Tensor> {
        let (b, t) = ids.dims2()?;
        let v = self.table.dim(0)?;
        Ok(self
            .table
            .embedding(&ids.flatten_all()?)?
            .reshape((b, t, v))?)
    }
}

impl LanguageModel for Bigram {
    fn loss_terms(&self, b: &Batch, _: &StepContext) -> Result<(Tensor, Option<Tensor>)> {
        Ok((token_cross_entropy(&self.logits(&b.input_ids)?, b)?, None))
    }

    fn flops_per_token(&self, _: usize) -> f64 {
        6.0 * self.table.elem_count() as f64
    }

    fn hf_config(&self) -> serde_json::Value {
        serde_json::json!({ "model_type": "bigram", "vocab_size": self.table.dim(0).unwrap_or(0) })
    }

    fn head(&self) -> Head<'_> {
        Head::Causal(self)
    }
}

impl CausalLm for Bigram {
    fn generate(
        &self,
        prompt: &[u32],
        max_new_tokens: usize,
        (sampling, rng): (&Sampling, &mut Rng),
        _: MatmulPrecision,
    ) -> Result<Vec<u32>> {
        let mut out = prompt.to_vec();
        for _ in 0..max_new_tokens {
            let last = out.last().copied().unwrap_or(0);
            let row: Vec<f32> = self.table.get(last as usize)?.to_vec1()?;
            out.push(sampling.sample(&row, rng));
        }
        Ok(out)
    }

    fn context_len(&self) -> usize {
        usize::MAX
    }
}

fn config(corpus: &Path) -> String {
    format!(
        r#"
[model]
family = "bigram"
n_layer = 1
n_head = 1
n_embd = 8
block_size = 16

[data]
corpus = "{}"
tokenizer = "char"

[optim]
lr = 0.1
warmup_iters = 0

[train]
batch_size = 8
max_iters = 30
eval_interval = 15
eval_iters = 2
log_interval = 5
sample_tokens = 0
"#,
        corpus.display()
    )
}

#[test]
fn a_fifth_family_trains_checkpoints_resumes_and_samples_by_registration_alone() {
    lm_train::registry::register(&BIGRAM).unwrap();
    assert!(
        lm_train::registry::register(&BIGRAM).is_err(),
        "a name is registered once"
    );

    let tmp = tempfile::tempdir().unwrap();
    let corpus = tmp.path().join("corpus.txt");
    std::fs::write(&corpus, &lm_train::data::SHAKESPEARE[..20_000]).unwrap();
    let cfg = lm_train::config::TrainConfig::from_toml(&config(&corpus), "bigram.toml").unwrap();
    assert_eq!(cfg.model.family.name, "bigram");
    let run = tmp.path().join("run");
    let mut t = Trainer::new(cfg.clone(), &run, Device::Cpu).unwrap();
    t.stop_at(15).unwrap();
    t.train().unwrap();
    drop(t);
    let mut resumed = Trainer::resume(&run, None, Device::Cpu).unwrap();
    let summary = resumed.train().unwrap();
    assert_eq!(summary.step, 30);
    let (_, val) = summary.last_eval.unwrap();
    let uniform = (resumed.tokenizer().vocab_size() as f32).ln();
    // A bigram table learns character pairs quickly: well below the uniform guess.
    assert!(val < uniform - 0.5, "val loss {val}, uniform {uniform}");
    // Resumed at step 15, the run equals the one trained straight through.
    let mut straight = Trainer::new(cfg, &tmp.path().join("straight"), Device::Cpu).unwrap();
    let (_, straight_val) = straight.train().unwrap().last_eval.unwrap();
    assert_eq!(val.to_bits(), straight_val.to_bits());
    let sample = resumed.sample(20, 0).unwrap().unwrap();
    assert!(sample.chars().count() >= 20, "{sample:?}");
    assert!(run
        .join("checkpoints/step-00000030/model.safetensors")
        .exists());
}
