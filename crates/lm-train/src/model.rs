//! The model of a run, whatever its family, and the batch it trains on.

use candle_core::{Device, Tensor};
use lm_models::bart::{Bart, BartConfig};
use lm_models::bert::{Bert, BertConfig, BertForSequenceClassification};
use lm_models::gpt::{Gpt, GptConfig};
use lm_models::t5::{T5Config, T5};
use lm_models::EncoderDecoder;
use lm_models::ParamStore;
use lm_objectives::loss::{cross_entropy, nsp_loss, CrossEntropy};
use lm_optim::presets::NamedVars;

use crate::config::{Family, T5FeedForward, TrainConfig};
use crate::error::{Result, TrainError};

/// One (micro-)batch, ready for any family. Unused fields are `None`.
#[derive(Debug, Clone)]
pub struct Batch {
    /// Encoder or decoder-only inputs `[b, t]` (u32).
    pub input_ids: Tensor,
    /// 1 for tokens, 0 for padding.
    pub attention_mask: Option<Tensor>,
    /// BERT segment ids.
    pub token_type_ids: Option<Tensor>,
    /// Targets `[b, t']` (i64, −100 where not scored).
    pub labels: Tensor,
    /// BERT NSP labels `[b]`.
    pub nsp_labels: Option<Tensor>,
    /// Encoder-decoder decoder inputs `[b, t']`.
    pub decoder_input_ids: Option<Tensor>,
    /// A decoder-only prefix LM's prefix length per row `[b]` (u32): those tokens attend to
    /// each other in both directions.
    pub prefix_len: Option<Tensor>,
    /// Tokens the batch carries (inputs plus decoder inputs), for throughput.
    pub tokens: usize,
}

/// The MLM loss over the scored positions only: their hidden states are gathered first, so the
/// vocabulary-sized head runs on the ~15% of tokens that are scored instead of all of them (the
/// same mean cross-entropy; the others' logits would only be ignored).
fn masked_lm_loss(m: &Bert, sequence: &Tensor, labels: &Tensor) -> Result<Tensor> {
    let (b, t, d) = sequence.dims3()?;
    let flat: Vec<i64> = labels.flatten_all()?.to_vec1()?;
    let rows: Vec<u32> = (0..flat.len() as u32)
        .filter(|&i| flat[i as usize] != lm_objectives::IGNORE_INDEX)
        .collect();
    if rows.is_empty() {
        // Nothing scored: the mean of nothing, as the full cross-entropy gives it.
        let logits = m.mlm_logits(sequence)?;
        return Ok(cross_entropy(&logits, labels, &CrossEntropy::default())?);
    }
    let index = Tensor::new(rows.as_slice(), sequence.device())?;
    let states = sequence.reshape((b * t, d))?.index_select(&index, 0)?;
    let targets: Vec<i64> = rows.iter().map(|&i| flat[i as usize]).collect();
    let targets = Tensor::from_vec(targets, rows.len(), sequence.device())?;
    Ok(cross_entropy(
        &m.mlm_logits(&states)?,
        &targets,
        &CrossEntropy::default(),
    )?)
}

/// Scales of a loss's two kinds of term (see [`AnyModel::weighted_loss`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LossWeights {
    /// Of the token-level cross-entropy.
    pub tokens: f64,
    /// Of the sequence-level term (NSP).
    pub sequences: f64,
}

impl LossWeights {
    /// The plain loss.
    pub const ONE: Self = Self {
        tokens: 1.0,
        sequences: 1.0,
    };
}

impl Batch {
    /// Rows `rows` of the batch (every tensor narrowed on its first axis); `tokens` scaled to
    /// the share.
    pub fn rows(&self, rows: std::ops::Range<usize>) -> Result<Self> {
        let total = self.input_ids.dim(0)?;
        let (start, len) = (rows.start, rows.len());
        let cut = |t: &Tensor| t.narrow(0, start, len);
        let cut_opt = |t: &Option<Tensor>| t.as_ref().map(cut).transpose();
        Ok(Self {
            input_ids: cut(&self.input_ids)?,
            attention_mask: cut_opt(&self.attention_mask)?,
            token_type_ids: cut_opt(&self.token_type_ids)?,
            labels: cut(&self.labels)?,
            nsp_labels: cut_opt(&self.nsp_labels)?,
            decoder_input_ids: cut_opt(&self.decoder_input_ids)?,
            prefix_len: cut_opt(&self.prefix_len)?,
            tokens: self.tokens * len / total.max(1),
        })
    }

    /// Labels that are scored (not the ignore index).
    pub fn scored_labels(&self) -> Result<usize> {
        let ids = self.labels.flatten_all()?.to_vec1::<i64>()?;
        Ok(ids
            .iter()
            .filter(|&&l| l != lm_objectives::IGNORE_INDEX)
            .count())
    }

    /// The weights that make rows `rows` of this batch contribute their share of its loss:
    /// scored labels in the rows over those of the batch, and rows over rows.
    pub fn share_weights(&self, part: &Batch) -> Result<LossWeights> {
        let (all, mine) = (self.scored_labels()?, part.scored_labels()?);
        Ok(LossWeights {
            tokens: if all == 0 {
                0.0
            } else {
                mine as f64 / all as f64
            },
            sequences: part.input_ids.dim(0)? as f64 / self.input_ids.dim(0)?.max(1) as f64,
        })
    }
}

/// A model of any family.
#[derive(Debug)]
pub enum AnyModel {
    /// Decoder-only.
    Gpt(Gpt),
    /// Encoder-only (BERT and RoBERTa) with its pretraining heads.
    Bert(Bert),
    /// BERT with a classification head over the pooled `[CLS]` (fine-tuning), and the names of
    /// its classes in index order.
    BertClassifier(BertForSequenceClassification, Vec<String>),
    /// Encoder-decoder denoiser.
    Bart(Bart),
    /// Encoder-decoder text-to-text.
    T5(T5),
}

impl AnyModel {
    /// Builds the configured model for a vocabulary of `vocab` tokens; `pad`, `eos` and `bos` are
    /// the tokenizer's ids where the family uses them.
    pub fn build(
        cfg: &TrainConfig,
        vocab: usize,
        pad: u32,
        eos: u32,
        bos: u32,
        device: &Device,
    ) -> Result<(Self, ParamStore)> {
        let m = &cfg.model;
        let d_ff = m.d_ff.unwrap_or(4 * m.n_embd);
        let seed = cfg.train.seed;
        Ok(match m.family {
            Family::Gpt => {
                let mut c = GptConfig::new(vocab, m.block_size, m.n_embd, m.n_layer, m.n_head);
                c.dropout = m.dropout;
                let (g, s) = Gpt::init(&c, seed, device)?;
                (Self::Gpt(g), s)
            }
            Family::Bert | Family::Roberta => {
                let mut c =
                    BertConfig::sized(vocab, m.n_embd, m.n_layer, m.n_head, d_ff, m.block_size);
                c.hidden_dropout_prob = m.dropout;
                c.attention_probs_dropout_prob = m.dropout;
                c.pad_token_id = pad;
                let (b, s) = Bert::init(&c, seed, device)?;
                (Self::Bert(b), s)
            }
            Family::Bart => {
                let mut c =
                    BartConfig::sized(vocab, m.n_embd, m.n_layer, m.n_head, d_ff, m.block_size + 2);
                c.dropout = m.dropout;
                c.pad_token_id = pad;
                c.eos_token_id = eos;
                c.bos_token_id = bos;
                c.decoder_start_token_id = eos;
                let (b, s) = Bart::init(&c, seed, device)?;
                (Self::Bart(b), s)
            }
            Family::T5 => {
                let ff = m.t5_feed_forward.unwrap_or(T5FeedForward::Relu);
                let c = T5Config {
                    vocab_size: vocab,
                    d_model: m.n_embd,
                    d_kv: m.n_embd / m.n_head,
                    d_ff,
                    num_layers: m.n_layer,
                    num_heads: m.n_head,
                    dropout_rate: m.dropout,
                    feed_forward_proj: ff.as_str().into(),
                    tie_word_embeddings: ff != T5FeedForward::GatedGelu,
                    pad_token_id: pad,
                    eos_token_id: eos,
                    decoder_start_token_id: pad,
                    ..T5Config::small()
                };
                let (t, s) = T5::init(&c, seed, device)?;
                (Self::T5(t), s)
            }
        })
    }

    /// The training loss of a batch: causal-LM, MLM (+ NSP), or seq2seq cross-entropy.
    pub fn loss(&self, b: &Batch) -> Result<Tensor> {
        self.weighted_loss(b, LossWeights::ONE)
    }

    /// The loss with its token-level term (the mean cross-entropy over the scored labels) scaled
    /// by `w.tokens` and its sequence-level term (BERT's NSP, mean over rows) by `w.sequences`.
    /// A data-parallel rank holding part of a batch weights its terms by its share of the scored
    /// labels and rows, so that the ranks' losses sum to the whole batch's loss.
    pub fn weighted_loss(&self, b: &Batch, w: LossWeights) -> Result<Tensor> {
        let (tokens, sequences) = self.loss_terms(b)?;
        let tokens = if w.tokens == 1.0 {
            tokens
        } else if w.tokens == 0.0 {
            // No scored label in these rows: their mean is 0/0, and contributes nothing.
            tokens.zeros_like()?
        } else {
            (tokens * w.tokens)?
        };
        Ok(match sequences {
            None => tokens,
            Some(s) if w.sequences == 1.0 => (tokens + s)?,
            Some(s) => (tokens + (s * w.sequences)?)?,
        })
    }

    /// (mean token cross-entropy, mean sequence-level loss if the objective has one).
    fn loss_terms(&self, b: &Batch) -> Result<(Tensor, Option<Tensor>)> {
        let ce = CrossEntropy::default();
        let decoder_inputs = || {
            b.decoder_input_ids
                .as_ref()
                .ok_or_else(|| TrainError::Corpus {
                    corpus: "batch".into(),
                    problem: "an encoder-decoder batch needs decoder_input_ids".into(),
                })
        };
        let token_ce = |logits: Tensor| cross_entropy(&logits, &b.labels, &ce);
        Ok(match self {
            Self::Gpt(m) => {
                let logits = match &b.prefix_len {
                    None => m.forward(&b.input_ids)?,
                    Some(p) => m.forward_prefix_lm(&b.input_ids, p)?,
                };
                (token_ce(logits)?, None)
            }
            Self::Bert(m) => {
                let out = m.encode(
                    &b.input_ids,
                    b.token_type_ids.as_ref(),
                    b.attention_mask.as_ref(),
                )?;
                let mlm = masked_lm_loss(m, &out.sequence, &b.labels)?;
                let nsp = match &b.nsp_labels {
                    Some(labels) => Some(nsp_loss(&m.nsp_logits(&out.pooled)?, labels)?),
                    None => None,
                };
                (mlm, nsp)
            }
            Self::BertClassifier(m, _) => (
                token_ce(m.forward(
                    &b.input_ids,
                    b.token_type_ids.as_ref(),
                    b.attention_mask.as_ref(),
                )?)?,
                None,
            ),
            Self::Bart(m) => (
                token_ce(m.forward(&b.input_ids, b.attention_mask.as_ref(), decoder_inputs()?)?)?,
                None,
            ),
            Self::T5(m) => (
                token_ce(m.forward(&b.input_ids, b.attention_mask.as_ref(), decoder_inputs()?)?)?,
                None,
            ),
        })
    }

    /// Dropout on or off.
    pub fn set_training(&self, on: bool) {
        match self {
            Self::Gpt(m) => m.set_training(on),
            Self::Bert(m) => m.set_training(on),
            Self::BertClassifier(m, _) => m.set_training(on),
            Self::Bart(m) => m.set_training(on),
            Self::T5(m) => m.set_training(on),
        }
    }

    /// Training FLOPs per token at length `t`.
    pub fn flops_per_token(&self, t: usize) -> f64 {
        match self {
            Self::Gpt(m) => m.config().flops_per_token(t),
            Self::Bert(m) => m.config().flops_per_token(t),
            Self::BertClassifier(m, _) => m.config().flops_per_token(t),
            Self::Bart(m) => m.config().flops_per_token(t),
            Self::T5(m) => m.config().flops_per_token(t),
        }
    }

    /// The model's HuggingFace `config.json`.
    pub fn hf_config(&self) -> serde_json::Value {
        match self {
            Self::Gpt(m) => m.config().to_hf_json(),
            Self::Bert(m) => m.config().to_hf_json(),
            Self::BertClassifier(m, labels) => {
                let mut v = m.hf_config();
                let id2label: serde_json::Map<String, serde_json::Value> = labels
                    .iter()
                    .enumerate()
                    .map(|(i, l)| (i.to_string(), l.clone().into()))
                    .collect();
                let label2id: serde_json::Map<String, serde_json::Value> = labels
                    .iter()
                    .enumerate()
                    .map(|(i, l)| (l.clone(), i.into()))
                    .collect();
                v["id2label"] = id2label.into();
                v["label2id"] = label2id.into();
                v
            }
            Self::Bart(m) => m.config().to_hf_json(),
            Self::T5(m) => m.config().to_hf_json(),
        }
    }

    /// Optimizer groups by [`lm_optim::decays`] (matrices and embeddings decay, biases and norm
    /// gains do not); buffers (BART's `final_logits_bias`) are not trained.
    pub fn param_groups(&self, store: &ParamStore) -> (NamedVars, NamedVars) {
        let trained = store
            .vars()
            .into_iter()
            .filter(|(n, _)| !Bart::is_buffer(n))
            .collect();
        lm_optim::split_by_decay(trained)
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
        m.set_training(false);
        let ids = Tensor::new(&[[2u32, 7, 9, 4, 11, 3], [2, 5, 6, 8, 3, 0]], &Device::Cpu).unwrap();
        let labels = Tensor::new(
            &[
                [-100i64, 7, -100, -100, 12, -100],
                [-100, -100, 6, -100, -100, -100],
            ],
            &Device::Cpu,
        )
        .unwrap();
        let seq = m.encode(&ids, None, None).unwrap().sequence;
        let full = cross_entropy(
            &m.mlm_logits(&seq).unwrap(),
            &labels,
            &CrossEntropy::default(),
        )
        .unwrap();
        let gathered = masked_lm_loss(&m, &seq, &labels).unwrap();
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
