//! The model of a run, whatever its family, and the batch it trains on.

use candle_core::{Device, Tensor};
use lm_models::bart::{Bart, BartConfig};
use lm_models::bert::{Bert, BertConfig, BertForSequenceClassification};
use lm_models::gpt::{Gpt, GptConfig};
use lm_models::t5::{T5Config, T5};
use lm_models::EncoderDecoder;
use lm_models::ParamStore;
use lm_objectives::loss::{bert_pretraining_loss, cross_entropy, CrossEntropy};
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
    /// Tokens the batch carries (inputs plus decoder inputs), for throughput.
    pub tokens: usize,
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
        let ce = CrossEntropy::default();
        let decoder_inputs = || {
            b.decoder_input_ids
                .as_ref()
                .ok_or_else(|| TrainError::Corpus {
                    corpus: "batch".into(),
                    problem: "an encoder-decoder batch needs decoder_input_ids".into(),
                })
        };
        Ok(match self {
            Self::Gpt(m) => cross_entropy(&m.forward(&b.input_ids)?, &b.labels, &ce)?,
            Self::Bert(m) => {
                let out = m.encode(
                    &b.input_ids,
                    b.token_type_ids.as_ref(),
                    b.attention_mask.as_ref(),
                )?;
                let mlm = m.mlm_logits(&out.sequence)?;
                match &b.nsp_labels {
                    Some(nsp) => {
                        bert_pretraining_loss(&mlm, &b.labels, &m.nsp_logits(&out.pooled)?, nsp)?
                    }
                    None => cross_entropy(&mlm, &b.labels, &ce)?,
                }
            }
            Self::BertClassifier(m, _) => cross_entropy(
                &m.forward(
                    &b.input_ids,
                    b.token_type_ids.as_ref(),
                    b.attention_mask.as_ref(),
                )?,
                &b.labels,
                &ce,
            )?,
            Self::Bart(m) => cross_entropy(
                &m.forward(&b.input_ids, b.attention_mask.as_ref(), decoder_inputs()?)?,
                &b.labels,
                &ce,
            )?,
            Self::T5(m) => cross_entropy(
                &m.forward(&b.input_ids, b.attention_mask.as_ref(), decoder_inputs()?)?,
                &b.labels,
                &ce,
            )?,
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

    /// Optimizer groups: 2-D tensors (matrices, embeddings) decay, vectors (biases, norm gains)
    /// do not; buffers (BART's `final_logits_bias`) are not trained.
    pub fn param_groups(&self, store: &ParamStore) -> (NamedVars, NamedVars) {
        store
            .vars()
            .into_iter()
            .filter(|(n, _)| !Bart::is_buffer(n))
            .partition(|(_, v)| v.rank() >= 2)
    }
}
