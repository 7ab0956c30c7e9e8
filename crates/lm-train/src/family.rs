//! What a model family is to the trainer: a [`FamilySpec`] — its name, special tokens, the
//! objectives it trains with, how its pretraining examples are laid out, and how to build its
//! model (a [`LanguageModel`]). Specs are registered by name in [`crate::registry`]; nothing else
//! in the trainer, checkpoints, generation or CLI knows which families exist.

use std::path::Path;

use candle_core::Device;
use lm_models::ParamStore;

use crate::choices::{ObjectiveKind, T5FeedForward, TokenizerKind};
use crate::error::Result;
use crate::model::LanguageModel;

/// Where a family's model sits among transformer architectures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Architecture {
    /// A causal decoder (GPT): prefix LM puts the prefix in the same sequence.
    DecoderOnly,
    /// A bidirectional encoder (BERT, RoBERTa).
    EncoderOnly,
    /// Encoder and decoder with cross-attention (BART, T5): twice the stacks.
    EncoderDecoder,
}

/// How masked LM's pretraining sequences are made for an encoder-only family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MaskedLmInput {
    /// BERT: sentence pairs with next sentence prediction.
    NspPairs,
    /// RoBERTa: FULL-SENTENCES packed across documents, no NSP.
    FullSentences,
}

/// The decoder's first input of an encoder-decoder family's training batches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecoderStart {
    /// The padding token (T5).
    Pad,
    /// The end-of-sequence token (BART).
    Eos,
}

/// Token ids the objectives and batches need.
#[derive(Debug, Clone, Default)]
pub struct Specials {
    /// Padding.
    pub pad: u32,
    /// End of sequence.
    pub eos: u32,
    /// Beginning of sequence (`<s>`, `[CLS]`).
    pub bos: u32,
    /// `[SEP]` / `</s>`.
    pub sep: u32,
    /// `[MASK]` / `<mask>`.
    pub mask: u32,
    /// `<extra_id_0>`.
    pub sentinel: u32,
    /// All special ids (never masked or sampled).
    pub all: Vec<u32>,
}

/// The `[model]` sizes a family builds from, with the vocabulary and seed of the run.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelShape {
    /// Vocabulary size (the tokenizer's).
    pub vocab: usize,
    /// Transformer blocks (per stack).
    pub n_layer: usize,
    /// Attention heads.
    pub n_head: usize,
    /// Width.
    pub n_embd: usize,
    /// Context length of training examples.
    pub block_size: usize,
    /// Dropout rate.
    pub dropout: f64,
    /// Feed-forward width.
    pub d_ff: usize,
    /// T5's feed-forward block, where the family has one.
    pub t5_feed_forward: Option<T5FeedForward>,
    /// The run's seed (initial weights are a function of it and the parameter names).
    pub seed: u64,
}

/// A token's id in the run's tokenizer, or an error naming the missing token.
pub type TokenId<'a> = &'a dyn Fn(&str) -> Result<u32>;

/// A fresh model and its parameters.
pub type Built = (Box<dyn LanguageModel>, ParamStore);

/// A model loaded from a HuggingFace directory for fine-tuning: the model, its parameters, and
/// the names of the parameters that are new (not in the checkpoint).
pub type Loaded = (Box<dyn LanguageModel>, ParamStore, Vec<String>);

/// How fine-tuning loads a family's HuggingFace directory: `(dir, class labels of a
/// classification task, scratch, seed, device)`.
pub type LoadForFinetune = fn(&Path, Option<&[String]>, bool, u64, &Device) -> Result<Loaded>;

/// Everything family-specific, in one value per family.
#[derive(Debug)]
pub struct FamilySpec {
    /// The `model.family` spelling.
    pub name: &'static str,
    /// HuggingFace's `model_type` of the checkpoints this family writes and fine-tunes from
    /// (`None`: it has no HuggingFace form).
    pub hf_model_type: Option<&'static str>,
    /// The architecture.
    pub architecture: Architecture,
    /// The objective it pretrains with unless `objective.kind` says otherwise.
    pub default_objective: ObjectiveKind,
    /// Every objective it can train with.
    pub objectives: &'static [ObjectiveKind],
    /// Masked LM's sequences (encoder-only families).
    pub masked_lm_input: MaskedLmInput,
    /// Whether encoder inputs open with the BOS token (BART's `<s>`).
    pub encoder_bos: bool,
    /// The decoder's first input in training batches (encoder-decoders).
    pub decoder_start: DecoderStart,
    /// Its special tokens for a tokenizer of `kind`, in id order (they get the first ids).
    pub special_tokens: fn(TokenizerKind) -> Vec<String>,
    /// Its special ids, from a lookup of a token's id (which errs naming a missing token);
    /// `all` is left empty (the registry fills it from `special_tokens`).
    pub specials: fn(TokenId<'_>) -> Result<Specials>,
    /// A fresh model of `shape`, initialized from the seed.
    pub build: fn(&ModelShape, &Specials, &Device) -> Result<Built>,
    /// Loading a HuggingFace directory for fine-tuning, where the family fine-tunes.
    pub load_for_finetune: Option<LoadForFinetune>,
}

impl FamilySpec {
    /// Whether it trains with `objective`.
    pub fn fits(&self, objective: ObjectiveKind) -> bool {
        self.objectives.contains(&objective)
    }

    /// Whether a character-level tokenizer (no special tokens) can feed it: only a decoder-only
    /// model needs no special token.
    pub fn takes_char_tokenizer(&self) -> bool {
        self.architecture == Architecture::DecoderOnly
    }
}
