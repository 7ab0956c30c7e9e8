//! The model of a run, whatever its family ([`LanguageModel`]), and the batch it trains on.

use std::sync::Arc;

use candle_core::Tensor;
use lm_models::{EncoderDecoder, MatmulPrecision, ParamStore, Sampling, StepContext};
use lm_objectives::loss::{cross_entropy, CrossEntropy};
use lm_objectives::Rng;
use lm_optim::NamedVars;

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
    /// `labels` as the host built them (row-major), so that counting and gathering the scored
    /// positions reads nothing back from the device; `None` where the batch was made on the
    /// device.
    pub host_labels: Option<Arc<[i64]>>,
    /// Tokens the batch carries (inputs plus decoder inputs, padding not counted), for
    /// throughput and token-counted schedules.
    pub tokens: usize,
}

/// Scales of a loss's two kinds of term (see [`LanguageModel::weighted_loss`]).
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

/// Labels of `shape` on `device` and the host copy a [`Batch`] keeps of them.
pub fn labels_tensor(
    labels: Vec<i64>,
    shape: impl Into<candle_core::Shape>,
    device: &candle_core::Device,
) -> Result<(Tensor, Option<Arc<[i64]>>)> {
    let t = Tensor::from_slice(&labels, shape, device)?;
    Ok((t, Some(labels.into())))
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
            host_labels: match &self.host_labels {
                Some(h) => {
                    let per_row = h.len() / total.max(1);
                    Some(h[start * per_row..(start + len) * per_row].into())
                }
                None => None,
            },
            tokens: self.tokens * len / total.max(1),
        })
    }

    /// The labels on the host, row-major: the copy the batch was built from, else one counted
    /// read from the device.
    pub fn labels_on_host(&self) -> Result<std::borrow::Cow<'_, [i64]>> {
        Ok(match &self.host_labels {
            Some(h) => std::borrow::Cow::Borrowed(h),
            None => std::borrow::Cow::Owned(lm_kernels::host::read_vec(&self.labels)?),
        })
    }

    /// Labels that are scored (not the ignore index).
    pub fn scored_labels(&self) -> Result<usize> {
        Ok(self
            .labels_on_host()?
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

/// What a model's heads can do besides training: continue a prompt, map an input to an output,
/// classify, or nothing (an encoder pretrained with MLM).
pub enum Head<'a> {
    /// A causal decoder that continues prompts.
    Causal(&'a dyn CausalLm),
    /// An encoder-decoder that generates an output for an input.
    Seq2Seq(&'a dyn EncoderDecoder),
    /// A classifier over class labels.
    Classifier(&'a dyn Classifier),
    /// No generation (an encoder with pretraining heads).
    Encoder,
}

/// A causal decoder's generation.
pub trait CausalLm {
    /// `prompt` followed by `max_new_tokens` sampled tokens (products at `precision`).
    fn generate(
        &self,
        prompt: &[u32],
        max_new_tokens: usize,
        sampling: (&Sampling, &mut Rng),
        precision: MatmulPrecision,
    ) -> Result<Vec<u32>>;

    /// The longest sequence it reads.
    fn context_len(&self) -> usize;
}

/// A sequence classifier.
pub trait Classifier {
    /// Class logits `[b, classes]` of a batch's inputs.
    fn class_logits(&self, b: &Batch, ctx: &StepContext) -> Result<Tensor>;
}

/// A model the trainer trains, checkpoints and samples from, whatever its family: the seam
/// between the loop and the architectures (each family implements it in `families/`). Every
/// forward pass takes its [`StepContext`] (matmul precision, dropout key) from the caller.
pub trait LanguageModel: std::fmt::Debug + Send + Sync {
    /// (mean token cross-entropy, mean sequence-level loss if the objective has one) of a batch.
    fn loss_terms(&self, b: &Batch, ctx: &StepContext) -> Result<(Tensor, Option<Tensor>)>;

    /// Training FLOPs per token at length `t`.
    fn flops_per_token(&self, t: usize) -> f64;

    /// The model's HuggingFace `config.json`.
    fn hf_config(&self) -> serde_json::Value;

    /// Whether the parameter `name` is a buffer, saved but not trained (BART's
    /// `final_logits_bias`).
    fn is_buffer(&self, _name: &str) -> bool {
        false
    }

    /// What it can generate.
    fn head(&self) -> Head<'_>;

    /// The loss of a batch.
    fn loss(&self, b: &Batch, ctx: &StepContext) -> Result<Tensor> {
        self.weighted_loss(b, LossWeights::ONE, ctx)
    }

    /// The loss with its token-level term (the mean cross-entropy over the scored labels) scaled
    /// by `w.tokens` and its sequence-level term (BERT's NSP, mean over rows) by `w.sequences`.
    /// A data-parallel rank holding part of a batch weights its terms by its share of the scored
    /// labels and rows, so that the ranks' losses sum to the whole batch's loss.
    fn weighted_loss(&self, b: &Batch, w: LossWeights, ctx: &StepContext) -> Result<Tensor> {
        let (tokens, sequences) = self.loss_terms(b, ctx)?;
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
}

/// Optimizer groups by [`lm_optim::decays`] (matrices and embeddings decay, biases and norm
/// gains do not); buffers are not trained.
pub fn param_groups(model: &dyn LanguageModel, store: &ParamStore) -> (NamedVars, NamedVars) {
    let trained = store
        .vars()
        .into_iter()
        .filter(|(n, _)| !model.is_buffer(n))
        .collect();
    lm_optim::split_by_decay(trained)
}

/// The cross-entropy of logits against a batch's labels (ignore index −100, mean).
pub fn token_cross_entropy(logits: &Tensor, b: &Batch) -> Result<Tensor> {
    Ok(cross_entropy(logits, &b.labels, &CrossEntropy::default())?)
}

/// A batch's decoder inputs, which an encoder-decoder needs.
pub fn decoder_inputs(b: &Batch) -> Result<&Tensor> {
    b.decoder_input_ids
        .as_ref()
        .ok_or_else(|| TrainError::Corpus {
            corpus: "batch".into(),
            problem: "an encoder-decoder batch needs decoder_input_ids".into(),
        })
}
