//! BART: encoder-decoder, text infilling and sentence permutation (or prefix LM); HuggingFace's
//! `bart`.

use std::path::Path;

use candle_core::{Device, Tensor};
use lm_models::bart::{Bart, BartConfig};
use lm_models::{EncoderDecoder, ParamStore, StepContext};

use super::bert::{roberta_specials, roberta_tokens};
use crate::choices::ObjectiveKind;
use crate::error::Result;
use crate::family::{
    Architecture, DecoderStart, FamilySpec, Loaded, MaskedLmInput, ModelShape, Specials,
};
use crate::model::{decoder_inputs, token_cross_entropy, Batch, Head, LanguageModel};

/// The BART family (RoBERTa's special tokens).
pub const BART: FamilySpec = FamilySpec {
    name: "bart",
    hf_model_type: Some("bart"),
    architecture: Architecture::EncoderDecoder,
    default_objective: ObjectiveKind::Denoising,
    objectives: &[ObjectiveKind::Denoising, ObjectiveKind::PrefixLm],
    masked_lm_input: MaskedLmInput::FullSentences,
    encoder_bos: true,
    decoder_start: DecoderStart::Eos,
    special_tokens: roberta_tokens,
    specials: roberta_specials,
    build,
    load_for_finetune: Some(load_for_finetune),
};

fn build(
    shape: &ModelShape,
    specials: &Specials,
    device: &Device,
) -> Result<(Box<dyn LanguageModel>, ParamStore)> {
    let s = shape;
    let mut c = BartConfig::sized(
        s.vocab,
        s.n_embd,
        s.n_layer,
        s.n_head,
        s.d_ff,
        s.block_size + 2,
    );
    c.dropout = s.dropout;
    c.pad_token_id = specials.pad;
    c.eos_token_id = specials.eos;
    c.bos_token_id = specials.bos;
    c.decoder_start_token_id = specials.eos;
    let (b, store) = Bart::init(&c, s.seed, device)?;
    Ok((Box::new(BartModel(b)), store))
}

fn load_for_finetune(
    dir: &Path,
    labels: Option<&[String]>,
    scratch: bool,
    seed: u64,
    device: &Device,
) -> Result<Loaded> {
    super::refuse_labels(dir, "bart", labels)?;
    let (m, s, fresh) = super::load_pretrained(
        dir,
        "bart",
        (scratch, seed, device),
        Bart::init,
        Bart::from_hf_dir,
    )?;
    Ok((Box::new(BartModel(m)), s, fresh))
}

/// [`Bart`] as a [`LanguageModel`].
#[derive(Debug)]
pub struct BartModel(pub Bart);

impl LanguageModel for BartModel {
    fn loss_terms(&self, b: &Batch, ctx: &StepContext) -> Result<(Tensor, Option<Tensor>)> {
        let (ids, mask) = (&b.input_ids, b.attention_mask.as_ref());
        let logits = self.0.forward(ids, mask, decoder_inputs(b)?, ctx)?;
        Ok((token_cross_entropy(&logits, b)?, None))
    }

    fn flops_per_token(&self, t: usize) -> f64 {
        self.0.config().flops_per_token(t)
    }

    fn hf_config(&self) -> serde_json::Value {
        self.0.config().to_hf_json()
    }

    fn is_buffer(&self, name: &str) -> bool {
        Bart::is_buffer(name)
    }

    fn head(&self) -> Head<'_> {
        Head::Seq2Seq(&self.0)
    }
}
