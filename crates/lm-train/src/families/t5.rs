//! T5: encoder-decoder, span corruption (or prefix LM); HuggingFace's `t5`.

use std::path::Path;

use candle_core::{Device, Tensor};
use lm_models::t5::{T5Config, T5};
use lm_models::{EncoderDecoder, ParamStore, StepContext};

use crate::choices::{ObjectiveKind, T5FeedForward, TokenizerKind};
use crate::error::Result;
use crate::family::{
    Architecture, DecoderStart, FamilySpec, Loaded, MaskedLmInput, ModelShape, Specials,
};
use crate::model::{decoder_inputs, token_cross_entropy, Batch, Head, LanguageModel};

/// The T5 family.
pub const T5_FAMILY: FamilySpec = FamilySpec {
    name: "t5",
    hf_model_type: Some("t5"),
    architecture: Architecture::EncoderDecoder,
    default_objective: ObjectiveKind::SpanCorruption,
    objectives: &[ObjectiveKind::SpanCorruption, ObjectiveKind::PrefixLm],
    masked_lm_input: MaskedLmInput::FullSentences,
    encoder_bos: false,
    decoder_start: DecoderStart::Pad,
    special_tokens,
    specials,
    build,
    load_for_finetune: Some(load_for_finetune),
};

/// `<pad>`, `</s>`, `<unk>` and the 100 sentinels `<extra_id_0>` … `<extra_id_99>`.
fn special_tokens(kind: TokenizerKind) -> Vec<String> {
    if kind == TokenizerKind::Char {
        return vec![];
    }
    let mut v: Vec<String> = ["<pad>", "</s>", "<unk>"].map(String::from).to_vec();
    v.extend((0..100).map(|k| format!("<extra_id_{k}>")));
    v
}

fn specials(id: &dyn Fn(&str) -> Result<u32>) -> Result<Specials> {
    Ok(Specials {
        pad: id("<pad>")?,
        eos: id("</s>")?,
        bos: id("<pad>")?,
        sep: id("</s>")?,
        mask: 0,
        sentinel: id("<extra_id_0>")?,
        all: vec![],
    })
}

fn build(
    shape: &ModelShape,
    specials: &Specials,
    device: &Device,
) -> Result<(Box<dyn LanguageModel>, ParamStore)> {
    let s = shape;
    let ff = s.t5_feed_forward.unwrap_or(T5FeedForward::Relu);
    let c = T5Config {
        vocab_size: s.vocab,
        d_model: s.n_embd,
        d_kv: s.n_embd / s.n_head,
        d_ff: s.d_ff,
        num_layers: s.n_layer,
        num_heads: s.n_head,
        dropout_rate: s.dropout,
        feed_forward_proj: ff.as_str().into(),
        tie_word_embeddings: ff != T5FeedForward::GatedGelu,
        pad_token_id: specials.pad,
        eos_token_id: specials.eos,
        decoder_start_token_id: specials.pad,
        ..T5Config::small()
    };
    let (t, store) = T5::init(&c, s.seed, device)?;
    Ok((Box::new(T5Model(t)), store))
}

fn load_for_finetune(
    dir: &Path,
    labels: Option<&[String]>,
    scratch: bool,
    seed: u64,
    device: &Device,
) -> Result<Loaded> {
    super::refuse_labels(dir, "t5", labels)?;
    let (m, s, fresh) = super::load_pretrained(
        dir,
        "t5",
        (scratch, seed, device),
        T5::init,
        T5::from_hf_dir,
    )?;
    Ok((Box::new(T5Model(m)), s, fresh))
}

/// [`T5`] as a [`LanguageModel`].
#[derive(Debug)]
pub struct T5Model(pub T5);

impl LanguageModel for T5Model {
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

    fn head(&self) -> Head<'_> {
        Head::Seq2Seq(&self.0)
    }
}
