//! GPT: decoder-only, causal LM (or prefix LM over a bidirectional prefix); HuggingFace's
//! `gpt2`.

use std::path::Path;

use candle_core::{Device, Tensor};
use lm_models::gpt::{Gpt, GptConfig};
use lm_models::{MatmulPrecision, ParamStore, Sampling, StepContext};
use lm_objectives::loss::{head_cross_entropy, CrossEntropy};
use lm_objectives::Rng;

use crate::choices::{ObjectiveKind, TokenizerKind};
use crate::error::Result;
use crate::family::{
    Architecture, DecoderStart, FamilySpec, Loaded, MaskedLmInput, ModelShape, Specials,
};
use crate::model::{token_cross_entropy, Batch, CausalLm, Head, LanguageModel};

/// Logit values (tokens × vocabulary) from which the head and its loss run in chunks of the
/// vocabulary (2^24, 64 MiB of f32: GPT-2 small at 4 × 64 tokens stays below, at 1 × 1 024
/// above); below, the logits are made whole, which is faster.
pub const HEAD_IN_CHUNKS_FROM: usize = 1 << 24;

/// The GPT family.
pub const GPT: FamilySpec = FamilySpec {
    name: "gpt",
    hf_model_type: Some("gpt2"),
    architecture: Architecture::DecoderOnly,
    default_objective: ObjectiveKind::CausalLm,
    objectives: &[ObjectiveKind::CausalLm, ObjectiveKind::PrefixLm],
    masked_lm_input: MaskedLmInput::FullSentences,
    encoder_bos: false,
    decoder_start: DecoderStart::Eos,
    special_tokens,
    specials,
    build,
    load_for_finetune: Some(load_for_finetune),
};

fn special_tokens(kind: TokenizerKind) -> Vec<String> {
    match kind {
        TokenizerKind::Char => vec![],
        _ => vec!["<|endoftext|>".into()],
    }
}

/// `<|endoftext|>` is GPT-2's every special token (none with a character vocabulary).
fn specials(id: &dyn Fn(&str) -> Result<u32>) -> Result<Specials> {
    let e = id("<|endoftext|>")?;
    Ok(Specials {
        pad: e,
        eos: e,
        bos: e,
        sep: e,
        mask: e,
        sentinel: e,
        all: vec![],
    })
}

fn build(
    shape: &ModelShape,
    _specials: &Specials,
    device: &Device,
) -> Result<(Box<dyn LanguageModel>, ParamStore)> {
    let s = shape;
    let mut c = GptConfig::new(s.vocab, s.block_size, s.n_embd, s.n_layer, s.n_head);
    c.dropout = s.dropout;
    let (g, store) = Gpt::init(&c, s.seed, device)?;
    Ok((Box::new(GptModel(g)), store))
}

fn load_for_finetune(
    dir: &Path,
    _labels: Option<&[String]>,
    scratch: bool,
    seed: u64,
    device: &Device,
) -> Result<Loaded> {
    let (m, s, fresh) = super::load_pretrained(
        dir,
        "gpt2",
        (scratch, seed, device),
        Gpt::init,
        Gpt::from_hf_dir,
    )?;
    Ok((Box::new(GptModel(m)), s, fresh))
}

/// [`Gpt`] as a [`LanguageModel`].
#[derive(Debug)]
pub struct GptModel(pub Gpt);

impl LanguageModel for GptModel {
    fn loss_terms(&self, b: &Batch, ctx: &StepContext) -> Result<(Tensor, Option<Tensor>)> {
        // Large logits (GPT-2's 50 257 entries × 1 024 tokens: 196 MiB, held three times over)
        // are never made whole: the head and its loss run in chunks of the vocabulary.
        let vocab = self.0.config().vocab_size;
        if b.input_ids.elem_count() * vocab >= HEAD_IN_CHUNKS_FROM {
            let hidden = self
                .0
                .hidden_states(&b.input_ids, b.prefix_len.as_ref(), ctx)?;
            let (w, ce) = (self.0.head_weight(), CrossEntropy::default());
            if let Some(loss) = head_cross_entropy(&hidden, w, &b.labels, &ce, ctx.precision)? {
                return Ok((loss, None));
            }
        }
        let logits = match &b.prefix_len {
            None => self.0.forward(&b.input_ids, ctx)?,
            Some(p) => self.0.forward_prefix_lm(&b.input_ids, p, ctx)?,
        };
        Ok((token_cross_entropy(&logits, b)?, None))
    }

    fn flops_per_token(&self, t: usize) -> f64 {
        self.0.config().flops_per_token(t)
    }

    fn hf_config(&self) -> serde_json::Value {
        self.0.config().to_hf_json()
    }

    fn head(&self) -> Head<'_> {
        Head::Causal(self)
    }
}

impl CausalLm for GptModel {
    fn generate(
        &self,
        prompt: &[u32],
        max_new_tokens: usize,
        (sampling, rng): (&Sampling, &mut Rng),
        precision: MatmulPrecision,
    ) -> Result<Vec<u32>> {
        Ok(self
            .0
            .generate(prompt, max_new_tokens, (sampling, rng), precision)?)
    }

    fn context_len(&self) -> usize {
        self.0.config().n_positions
    }
}
