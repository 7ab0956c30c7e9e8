//! BERT and RoBERTa: encoder-only, masked LM (BERT with next sentence prediction, RoBERTa on
//! FULL-SENTENCES); HuggingFace's `bert`, and a classifier over `[CLS]` for fine-tuning.

use std::path::Path;

use candle_core::{Device, Tensor};
use lm_models::bert::{Bert, BertConfig, BertForSequenceClassification};
use lm_models::{ParamStore, StepContext};
use lm_objectives::loss::{cross_entropy, nsp_loss, CrossEntropy};

use crate::choices::{ObjectiveKind, TokenizerKind};
use crate::error::{Result, TrainError};
use crate::family::{
    Architecture, DecoderStart, FamilySpec, Loaded, MaskedLmInput, ModelShape, Specials,
};
use crate::model::{token_cross_entropy, Batch, Classifier, Head, LanguageModel};

/// BERT: masked LM with next sentence prediction on sentence pairs.
pub const BERT: FamilySpec = FamilySpec {
    name: "bert",
    hf_model_type: Some("bert"),
    architecture: Architecture::EncoderOnly,
    default_objective: ObjectiveKind::MaskedLm,
    objectives: &[ObjectiveKind::MaskedLm],
    masked_lm_input: MaskedLmInput::NspPairs,
    encoder_bos: true,
    decoder_start: DecoderStart::Pad,
    special_tokens: bert_tokens,
    specials: bert_specials,
    build,
    load_for_finetune: Some(load_for_finetune),
};

/// RoBERTa: BERT's model, dynamic masked LM on FULL-SENTENCES, no NSP, RoBERTa's tokens. Its
/// checkpoints are BERT's (HuggingFace `bert`), so it fine-tunes through [`BERT`].
pub const ROBERTA: FamilySpec = FamilySpec {
    name: "roberta",
    hf_model_type: None,
    masked_lm_input: MaskedLmInput::FullSentences,
    special_tokens: roberta_tokens,
    specials: roberta_specials,
    load_for_finetune: None,
    ..BERT
};

fn bert_tokens(kind: TokenizerKind) -> Vec<String> {
    match kind {
        TokenizerKind::Char => vec![],
        _ => ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
            .map(String::from)
            .to_vec(),
    }
}

/// RoBERTa's (and BART's) tokens.
pub(crate) fn roberta_tokens(kind: TokenizerKind) -> Vec<String> {
    match kind {
        TokenizerKind::Char => vec![],
        _ => ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
            .map(String::from)
            .to_vec(),
    }
}

fn bert_specials(id: &dyn Fn(&str) -> Result<u32>) -> Result<Specials> {
    Ok(Specials {
        pad: id("[PAD]")?,
        eos: id("[SEP]")?,
        bos: id("[CLS]")?,
        sep: id("[SEP]")?,
        mask: id("[MASK]")?,
        sentinel: 0,
        all: vec![],
    })
}

/// RoBERTa's (and BART's) special ids.
pub(crate) fn roberta_specials(id: &dyn Fn(&str) -> Result<u32>) -> Result<Specials> {
    Ok(Specials {
        pad: id("<pad>")?,
        eos: id("</s>")?,
        bos: id("<s>")?,
        sep: id("</s>")?,
        mask: id("<mask>")?,
        sentinel: 0,
        all: vec![],
    })
}

fn build(
    shape: &ModelShape,
    specials: &Specials,
    device: &Device,
) -> Result<(Box<dyn LanguageModel>, ParamStore)> {
    let s = shape;
    let mut c = BertConfig::sized(s.vocab, s.n_embd, s.n_layer, s.n_head, s.d_ff, s.block_size);
    c.hidden_dropout_prob = s.dropout;
    c.attention_probs_dropout_prob = s.dropout;
    c.pad_token_id = specials.pad;
    let (b, store) = Bert::init(&c, s.seed, device)?;
    Ok((Box::new(BertModel(b)), store))
}

fn load_for_finetune(
    dir: &Path,
    labels: Option<&[String]>,
    scratch: bool,
    seed: u64,
    device: &Device,
) -> Result<Loaded> {
    let Some(labels) = labels else {
        return Err(TrainError::Checkpoint {
            path: dir.into(),
            problem: "a BERT checkpoint fine-tunes on classification tasks (pairs or labelled JSONL), not input/target pairs".into(),
        });
    };
    let (m, s, fresh) = if scratch {
        let c: BertConfig = lm_models::hf::read_config(dir, &["bert"])?;
        let (m, s) = BertForSequenceClassification::init(&c, labels.len(), seed, device)?;
        let fresh = super::all_names(&s);
        (m, s, fresh)
    } else {
        BertForSequenceClassification::from_hf_dir(dir, labels.len(), seed, device)?
    };
    let model = BertClassifierModel {
        model: m,
        labels: labels.to_vec(),
    };
    Ok((Box::new(model), s, fresh))
}

/// [`Bert`] with its pretraining heads as a [`LanguageModel`].
#[derive(Debug)]
pub struct BertModel(pub Bert);

/// The MLM loss over the scored positions only: their hidden states are gathered first, so the
/// vocabulary-sized head runs on the ~15% of tokens that are scored instead of all of them (the
/// same mean cross-entropy; the others' logits would only be ignored). `flat` is `labels` on the
/// host (the batch's copy: the positions are found without reading the device).
fn masked_lm_loss(
    m: &Bert,
    sequence: &Tensor,
    (labels, flat): (&Tensor, &[i64]),
    ctx: &StepContext,
) -> Result<Tensor> {
    let (b, t, d) = sequence.dims3()?;
    let rows: Vec<u32> = (0..flat.len() as u32)
        .filter(|&i| flat[i as usize] != lm_objectives::IGNORE_INDEX)
        .collect();
    if rows.is_empty() {
        // Nothing scored: the mean of nothing, as the full cross-entropy gives it.
        let logits = m.mlm_logits(sequence, ctx)?;
        return Ok(cross_entropy(&logits, labels, &CrossEntropy::default())?);
    }
    let index = Tensor::new(rows.as_slice(), sequence.device())?;
    let states = sequence.reshape((b * t, d))?.index_select(&index, 0)?;
    let targets: Vec<i64> = rows.iter().map(|&i| flat[i as usize]).collect();
    let targets = Tensor::from_vec(targets, rows.len(), sequence.device())?;
    Ok(cross_entropy(
        &m.mlm_logits(&states, ctx)?,
        &targets,
        &CrossEntropy::default(),
    )?)
}

impl LanguageModel for BertModel {
    fn loss_terms(&self, b: &Batch, ctx: &StepContext) -> Result<(Tensor, Option<Tensor>)> {
        let m = &self.0;
        let out = m.encode(
            &b.input_ids,
            b.token_type_ids.as_ref(),
            b.attention_mask.as_ref(),
            ctx,
        )?;
        let labels = (&b.labels, &*b.labels_on_host()?);
        let mlm = masked_lm_loss(m, &out.sequence, labels, ctx)?;
        let nsp = match &b.nsp_labels {
            Some(labels) => Some(nsp_loss(&m.nsp_logits(&out.pooled, ctx)?, labels)?),
            None => None,
        };
        Ok((mlm, nsp))
    }

    fn flops_per_token(&self, t: usize) -> f64 {
        self.0.config().flops_per_token(t)
    }

    fn hf_config(&self) -> serde_json::Value {
        self.0.config().to_hf_json()
    }

    fn head(&self) -> Head<'_> {
        Head::Encoder
    }
}

/// BERT with a classification head over the pooled `[CLS]` (fine-tuning), and the names of its
/// classes in index order.
#[derive(Debug)]
pub struct BertClassifierModel {
    /// The model.
    pub model: BertForSequenceClassification,
    /// Class names by index.
    pub labels: Vec<String>,
}

impl LanguageModel for BertClassifierModel {
    fn loss_terms(&self, b: &Batch, ctx: &StepContext) -> Result<(Tensor, Option<Tensor>)> {
        Ok((token_cross_entropy(&self.class_logits(b, ctx)?, b)?, None))
    }

    fn flops_per_token(&self, t: usize) -> f64 {
        self.model.config().flops_per_token(t)
    }

    fn hf_config(&self) -> serde_json::Value {
        let mut v = self.model.hf_config();
        let id2label: serde_json::Map<String, serde_json::Value> = self
            .labels
            .iter()
            .enumerate()
            .map(|(i, l)| (i.to_string(), l.clone().into()))
            .collect();
        let label2id: serde_json::Map<String, serde_json::Value> = self
            .labels
            .iter()
            .enumerate()
            .map(|(i, l)| (l.clone(), i.into()))
            .collect();
        v["id2label"] = id2label.into();
        v["label2id"] = label2id.into();
        v
    }

    fn head(&self) -> Head<'_> {
        Head::Classifier(self)
    }
}

impl Classifier for BertClassifierModel {
    fn class_logits(&self, b: &Batch, ctx: &StepContext) -> Result<Tensor> {
        Ok(self.model.forward(
            &b.input_ids,
            b.token_type_ids.as_ref(),
            b.attention_mask.as_ref(),
            ctx,
        )?)
    }
}
#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// The gathered MLM loss equals the full-sequence cross-entropy, in value and gradient.
    #[test]
    fn masked_lm_loss_equals_the_full_cross_entropy() {
        let (m, store) = Bert::init(&BertConfig::tiny(50), 3, &Device::Cpu).unwrap();
        let ctx = &StepContext::EVAL;
        let ids = Tensor::new(&[[2u32, 7, 9, 4, 11, 3], [2, 5, 6, 8, 3, 0]], &Device::Cpu).unwrap();
        let labels = Tensor::new(
            &[
                [-100i64, 7, -100, -100, 12, -100],
                [-100, -100, 6, -100, -100, -100],
            ],
            &Device::Cpu,
        )
        .unwrap();
        let seq = m.encode(&ids, None, None, ctx).unwrap().sequence;
        let full = cross_entropy(
            &m.mlm_logits(&seq, ctx).unwrap(),
            &labels,
            &CrossEntropy::default(),
        )
        .unwrap();
        let flat: Vec<i64> = labels.flatten_all().unwrap().to_vec1().unwrap();
        let gathered = masked_lm_loss(&m, &seq, (&labels, &flat), ctx).unwrap();
        let (a, b) = (
            full.to_scalar::<f32>().unwrap(),
            gathered.to_scalar::<f32>().unwrap(),
        );
        assert!((a - b).abs() < 1e-6, "{a} vs {b}");
        let (ga, gb) = (full.backward().unwrap(), gathered.backward().unwrap());
        for (name, v) in store.vars() {
            let (x, y) = (ga.get(v.as_tensor()), gb.get(v.as_tensor()));
            if let (Some(x), Some(y)) = (x, y) {
                let d: f32 = (x - y)
                    .unwrap()
                    .abs()
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .max(0)
                    .unwrap()
                    .to_scalar()
                    .unwrap();
                assert!(d < 1e-5, "{name}: {d}");
            }
        }
    }
}
