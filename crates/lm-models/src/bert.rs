//! BERT (encoder-only), laid out as HuggingFace's `BertForPreTraining`.
//!
//! The chapter's BERT: `x = EmbedTokenWithPosition(x) + SentenceEmbedding(x)`, where the sentence
//! embedding adds `e_A` to `[CLS] A [SEP]` and `e_B` to `B [SEP]`; then post-LayerNorm transformer
//! blocks attend bidirectionally. Two heads: masked LM (`softmax(E·transform(h_i) + b)`, output
//! tied to the token embedding `E`) and next sentence prediction on `[CLS]` through the pooler
//! (`tanh(W h_[CLS] + b)`).

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use serde::{Deserialize, Serialize};

use crate::context::StepContext;
use crate::error::{ModelError, Result};
use crate::layers::{checkpointed, Dropout};
use crate::layers::{embedding, lookup, padding_bias, LayerNorm, Linear};
use crate::params::ParamStore;
use lm_kernels::ops::{add_bias, residual_add, self_attention, Gelu};
use std::sync::Arc;

/// BERT hyperparameters, with HuggingFace `BertConfig` key names (other keys are kept in `extra`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BertConfig {
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Width d.
    pub hidden_size: usize,
    /// Number of layers.
    pub num_hidden_layers: usize,
    /// Heads per layer.
    pub num_attention_heads: usize,
    /// Feed-forward width.
    pub intermediate_size: usize,
    /// Learned positions.
    pub max_position_embeddings: usize,
    /// Segment types (2: e_A and e_B).
    #[serde(default = "two")]
    pub type_vocab_size: usize,
    /// Dropout on hidden states.
    #[serde(default)]
    pub hidden_dropout_prob: f64,
    /// Dropout on attention probabilities.
    #[serde(default)]
    pub attention_probs_dropout_prob: f64,
    /// Initialization standard deviation.
    #[serde(default = "init_range")]
    pub initializer_range: f64,
    /// LayerNorm ε.
    #[serde(default = "ln_eps")]
    pub layer_norm_eps: f64,
    /// Padding id.
    #[serde(default)]
    pub pad_token_id: u32,
    /// Keys of a loaded `config.json` that this type does not model (generation settings such
    /// as `forced_eos_token_id`, `task_specific_params`, …), written back unchanged on save.
    #[serde(flatten, default)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

fn two() -> usize {
    2
}
fn init_range() -> f64 {
    0.02
}
fn ln_eps() -> f64 {
    1e-12
}

impl BertConfig {
    /// A configuration of the given sizes with the paper's defaults for the rest.
    pub fn sized(
        vocab: usize,
        d: usize,
        layers: usize,
        heads: usize,
        ff: usize,
        positions: usize,
    ) -> Self {
        Self {
            vocab_size: vocab,
            hidden_size: d,
            num_hidden_layers: layers,
            num_attention_heads: heads,
            intermediate_size: ff,
            max_position_embeddings: positions,
            type_vocab_size: 2,
            hidden_dropout_prob: 0.1,
            attention_probs_dropout_prob: 0.1,
            initializer_range: 0.02,
            layer_norm_eps: 1e-12,
            pad_token_id: 0,
            extra: serde_json::Map::new(),
        }
    }

    /// BERT-base: 12 layers, 12 heads, d = 768 (110 M parameters).
    pub fn base() -> Self {
        Self::sized(30522, 768, 12, 12, 3072, 512)
    }

    /// BERT-large: 24 layers, 16 heads, d = 1024 (≈ 335 M parameters).
    pub fn large() -> Self {
        Self::sized(30522, 1024, 24, 16, 4096, 512)
    }

    /// A tiny model for tests (no dropout).
    pub fn tiny(vocab_size: usize) -> Self {
        Self {
            hidden_dropout_prob: 0.0,
            attention_probs_dropout_prob: 0.0,
            ..Self::sized(vocab_size, 16, 2, 2, 32, 32)
        }
    }

    /// Checks the sizes agree.
    pub fn validate(&self) -> Result<()> {
        if self.num_attention_heads == 0
            || !self.hidden_size.is_multiple_of(self.num_attention_heads)
        {
            return Err(ModelError::BadConfig {
                key: "hidden_size",
                problem: format!(
                    "{} is not divisible by num_attention_heads = {}",
                    self.hidden_size, self.num_attention_heads
                ),
            });
        }
        Ok(())
    }

    /// Parameters of `BertForPreTraining` (tied decoder counted once).
    pub fn num_params(&self) -> usize {
        let (d, f, v) = (self.hidden_size, self.intermediate_size, self.vocab_size);
        let emb = (v + self.max_position_embeddings + self.type_vocab_size) * d + 2 * d;
        let layer = 4 * (d * d + d) + 2 * d + (d * f + f) + (f * d + d) + 2 * d;
        let pooler = d * d + d;
        let heads = (d * d + d) + 2 * d + v + (2 * d + 2);
        emb + self.num_hidden_layers * layer + pooler + heads
    }

    /// Training FLOPs per token at sequence length `t`: `6·N + 12·L·d·t`.
    pub fn flops_per_token(&self, t: usize) -> f64 {
        6.0 * self.num_params() as f64
            + 12.0 * (self.num_hidden_layers * self.hidden_size * t) as f64
    }

    /// The configuration as HuggingFace's `config.json`.
    pub fn to_hf_json(&self) -> serde_json::Value {
        // INVARIANT: a struct of numbers, strings and string-keyed maps always serializes to JSON.
        let mut v = serde_json::to_value(self).expect("serializes");
        v["model_type"] = "bert".into();
        v["architectures"] = serde_json::json!(["BertForPreTraining"]);
        v["hidden_act"] = "gelu".into();
        v["tie_word_embeddings"] = true.into();
        v
    }
}

#[derive(Debug)]
struct Layer {
    query: Linear,
    key: Linear,
    value: Linear,
    attn_out: Linear,
    attn_ln: LayerNorm,
    intermediate: Linear,
    output: Linear,
    out_ln: LayerNorm,
    attn_dropout: Dropout,
    hidden_dropout: Dropout,
    heads: usize,
}

impl Layer {
    fn new(cfg: &BertConfig, i: usize, vb: VarBuilder) -> candle_core::Result<Self> {
        let (d, f, std) = (
            cfg.hidden_size,
            cfg.intermediate_size,
            cfg.initializer_range,
        );
        let att = vb.pp("attention");
        Ok(Self {
            query: Linear::new(d, d, true, std, att.pp("self").pp("query"))?,
            key: Linear::new(d, d, true, std, att.pp("self").pp("key"))?,
            value: Linear::new(d, d, true, std, att.pp("self").pp("value"))?,
            attn_out: Linear::new(d, d, true, std, att.pp("output").pp("dense"))?,
            attn_ln: LayerNorm::new(d, cfg.layer_norm_eps, att.pp("output").pp("LayerNorm"))?,
            intermediate: Linear::new(d, f, true, std, vb.pp("intermediate").pp("dense"))?,
            output: Linear::new(f, d, true, std, vb.pp("output").pp("dense"))?,
            out_ln: LayerNorm::new(d, cfg.layer_norm_eps, vb.pp("output").pp("LayerNorm"))?,
            attn_dropout: Dropout::new(cfg.attention_probs_dropout_prob, 0xBE27_0000 + i as u64),
            hidden_dropout: Dropout::new(cfg.hidden_dropout_prob, 0xBE27_1000 + i as u64),
            heads: cfg.num_attention_heads,
        })
    }

    /// The dropouts a forward draws from, for a recomputation to replay.
    fn dropouts(&self) -> Vec<&Dropout> {
        vec![&self.attn_dropout, &self.hidden_dropout]
    }

    /// Post-LN: `h = LN(x + Attn(x))`, `y = LN(h + FFN(h))`.
    fn forward(
        &self,
        x: &Tensor,
        bias: Option<&Tensor>,
        ctx: &StepContext,
    ) -> candle_core::Result<Tensor> {
        // One product for query, key and value, then the fused attention straight from it.
        let qkv = Linear::forward_packed(&[&self.query, &self.key, &self.value], x, ctx)?;
        let (b, t, _) = qkv.dims3()?;
        let scale = 1.0 / ((qkv.dim(2)? / 3 / self.heads) as f64).sqrt();
        // The padding bias [b, 1, 1, t] as one value per key.
        let key_bias = bias.map(|kb| kb.reshape((b, t))).transpose()?;
        // Dropout on the probabilities: the layer's mask for a [b, h, t, t] tensor.
        let keep = if ctx.training() && self.attn_dropout_active() {
            let ones = Tensor::ones((b, self.heads, t, t), qkv.dtype(), qkv.device())?;
            Some(self.attn_dropout.forward(&ones, ctx)?)
        } else {
            None
        };
        let (kb, keep) = (key_bias.as_ref(), keep.as_ref());
        let y = self_attention(&qkv, (self.heads, scale), kb, keep, ctx.precision)?;
        let a = self
            .hidden_dropout
            .forward(&self.attn_out.forward(&y, ctx)?, ctx)?;
        let h = self.attn_ln.forward(&residual_add(x, &a)?)?;
        let f = self
            .output
            .forward(&self.intermediate.forward_gelu(&h, Gelu::Erf, ctx)?, ctx)?;
        self.out_ln
            .forward(&residual_add(&h, &self.hidden_dropout.forward(&f, ctx)?)?)
    }

    fn attn_dropout_active(&self) -> bool {
        self.attn_dropout.rate() > 0.0
    }
}

/// The encoder's outputs.
#[derive(Debug, Clone)]
pub struct BertOutput {
    /// Final hidden states `[b, t, d]`.
    pub sequence: Tensor,
    /// The pooler's `tanh(W h_[CLS] + b)`, `[b, d]`.
    pub pooled: Tensor,
}

/// The BERT encoder (`bert.*`): embeddings, layers and pooler, shared by the pretraining and the
/// classification models.
#[derive(Debug)]
pub struct BertEncoder {
    cfg: BertConfig,
    word: Tensor,
    position: Tensor,
    token_type: Tensor,
    emb_ln: LayerNorm,
    emb_dropout: Dropout,
    layers: Vec<Arc<Layer>>,
    pooler: Linear,
}

impl BertEncoder {
    /// Builds `bert.*` under `vb` (the model's root).
    pub fn new(cfg: &BertConfig, vb: &VarBuilder) -> Result<Self> {
        cfg.validate()?;
        let (d, std) = (cfg.hidden_size, cfg.initializer_range);
        let b = vb.pp("bert");
        let e = b.pp("embeddings");
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| Layer::new(cfg, i, b.pp("encoder").pp("layer").pp(i)).map(Arc::new))
            .collect::<candle_core::Result<Vec<_>>>()?;
        Ok(Self {
            word: embedding(cfg.vocab_size, d, std, e.pp("word_embeddings"))?,
            position: embedding(
                cfg.max_position_embeddings,
                d,
                std,
                e.pp("position_embeddings"),
            )?,
            token_type: embedding(cfg.type_vocab_size, d, std, e.pp("token_type_embeddings"))?,
            emb_ln: LayerNorm::new(d, cfg.layer_norm_eps, e.pp("LayerNorm"))?,
            emb_dropout: Dropout::new(cfg.hidden_dropout_prob, 0xBE27_E000),
            layers,
            pooler: Linear::new(d, d, true, std, b.pp("pooler").pp("dense"))?,
            cfg: cfg.clone(),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &BertConfig {
        &self.cfg
    }

    /// The encoder: `input_ids [b, t]`, optional segment ids (0 = A, 1 = B; default all A) and
    /// attention mask (1 = token, 0 = padding; default all 1).
    pub fn encode(
        &self,
        input_ids: &Tensor,
        token_type_ids: Option<&Tensor>,
        attention_mask: Option<&Tensor>,
        ctx: &StepContext,
    ) -> Result<BertOutput> {
        let (_, t) = input_ids.dims2()?;
        if t > self.cfg.max_position_embeddings {
            return Err(ModelError::BadConfig {
                key: "max_position_embeddings",
                problem: format!("sequence of {t} tokens is too long"),
            });
        }
        let tok = lookup(&self.word, input_ids)?;
        let seg = match token_type_ids {
            Some(tt) => lookup(&self.token_type, tt)?,
            None => self.token_type.get(0)?.unsqueeze(0)?.unsqueeze(0)?,
        };
        let x = add_bias(&tok, &self.position.narrow(0, 0, t)?)?.broadcast_add(&seg)?;
        let mut x = self.emb_dropout.forward(&self.emb_ln.forward(&x)?, ctx)?;
        let bias = attention_mask
            .map(padding_bias)
            .transpose()?
            .map(|b| b.to_dtype(x.dtype()))
            .transpose()?;
        for (i, layer) in self.layers.iter().enumerate() {
            let (ctx, bias) = (*ctx, bias.clone());
            let run = move |l: &Layer, xs: &[Tensor]| l.forward(&xs[0], bias.as_ref(), &ctx);
            let recompute = ctx.recompute.block(i);
            x = checkpointed(recompute, layer.clone(), Layer::dropouts, &[x], run)?;
        }
        let cls = x.narrow(1, 0, 1)?.squeeze(1)?;
        let pooled = self.pooler.forward(&cls, ctx)?.tanh()?;
        Ok(BertOutput {
            sequence: x,
            pooled,
        })
    }
}

/// `BertForPreTraining`: encoder, pooler, MLM head (tied) and NSP head.
#[derive(Debug)]
pub struct Bert {
    encoder: BertEncoder,
    transform: Linear,
    transform_ln: LayerNorm,
    mlm_bias: Tensor,
    nsp: Linear,
}

impl Bert {
    /// Builds the model from `vb` with HuggingFace names, creating missing parameters with BERT's
    /// initialization (`N(0, 0.02)` weights, zero biases, unit LayerNorm gains).
    pub fn new(cfg: &BertConfig, vb: VarBuilder) -> Result<Self> {
        let encoder = BertEncoder::new(cfg, &vb)?;
        let (d, std) = (cfg.hidden_size, cfg.initializer_range);
        let p = vb.pp("cls").pp("predictions");
        Ok(Self {
            encoder,
            transform: Linear::new(d, d, true, std, p.pp("transform").pp("dense"))?,
            transform_ln: LayerNorm::new(d, cfg.layer_norm_eps, p.pp("transform").pp("LayerNorm"))?,
            mlm_bias: p.get_with_hints(cfg.vocab_size, "bias", candle_nn::Init::Const(0.0))?,
            nsp: Linear::new(d, 2, true, std, vb.pp("cls").pp("seq_relationship"))?,
        })
    }

    /// A freshly initialized model and its parameters.
    pub fn init(cfg: &BertConfig, seed: u64, device: &Device) -> Result<(Self, ParamStore)> {
        let store = ParamStore::new(seed);
        let model = Self::new(cfg, store.var_builder(DType::F32, device))?;
        Ok((model, store))
    }

    /// Loads a HuggingFace `BertForPreTraining` directory (a checkpoint without the pretraining
    /// heads loads too: missing `cls.*` tensors keep their fresh initialization, and their names are
    /// returned so the caller can log them).
    pub fn from_hf_dir(
        dir: &std::path::Path,
        device: &Device,
    ) -> Result<(Self, ParamStore, Vec<String>)> {
        let cfg: BertConfig = crate::hf::read_config(dir, &["bert"])?;
        let store = crate::hf::store_for(dir, 0)?;
        let model = Self::new(&cfg, store.var_builder(DType::F32, device))?;
        // A base-model (`BertModel`) checkpoint: names without `bert.`, no pretraining heads.
        let fresh =
            store.load_safetensors_layout(&dir.join("model.safetensors"), "bert.", |n| {
                n.starts_with("cls.") || n.starts_with("bert.pooler.")
            })?;
        Ok((model, store, fresh))
    }

    /// Writes a HuggingFace directory (`config.json`, `model.safetensors`) that transformers'
    /// `from_pretrained` loads.
    pub fn save_hf_dir(&self, store: &ParamStore, dir: &std::path::Path) -> Result<()> {
        crate::hf::save_dir(store, &self.config().to_hf_json(), dir)
    }

    /// The configuration.
    pub fn config(&self) -> &BertConfig {
        self.encoder.config()
    }

    /// The encoder's outputs (see [`BertEncoder::encode`]).
    pub fn encode(
        &self,
        input_ids: &Tensor,
        token_type_ids: Option<&Tensor>,
        attention_mask: Option<&Tensor>,
        ctx: &StepContext,
    ) -> Result<BertOutput> {
        self.encoder
            .encode(input_ids, token_type_ids, attention_mask, ctx)
    }

    /// Masked-LM logits `[b, t, V]`: `E·LN(GELU(W h + b)) + bias` with `E` the token embedding.
    pub fn mlm_logits(&self, sequence: &Tensor, ctx: &StepContext) -> Result<Tensor> {
        let h =
            self.transform_ln
                .forward(&self.transform.forward_gelu(sequence, Gelu::Erf, ctx)?)?;
        Ok(
            Linear::from_weight(self.encoder.word.clone(), Some(self.mlm_bias.clone()))
                .forward(&h, ctx)?,
        )
    }

    /// NSP logits `[b, 2]` (0 = IsNext, 1 = NotNext) from the pooled `[CLS]`.
    pub fn nsp_logits(&self, pooled: &Tensor, ctx: &StepContext) -> Result<Tensor> {
        Ok(self.nsp.forward(pooled, ctx)?)
    }

    /// Both pretraining heads: `(mlm_logits, nsp_logits)`.
    pub fn forward(
        &self,
        input_ids: &Tensor,
        token_type_ids: Option<&Tensor>,
        attention_mask: Option<&Tensor>,
        ctx: &StepContext,
    ) -> Result<(Tensor, Tensor)> {
        let out = self.encode(input_ids, token_type_ids, attention_mask, ctx)?;
        Ok((
            self.mlm_logits(&out.sequence, ctx)?,
            self.nsp_logits(&out.pooled, ctx)?,
        ))
    }
}

/// `BertForSequenceClassification`: the encoder and a linear classifier on the pooled `[CLS]`
/// (`classifier.*`), for single texts and pairs (segment ids).
#[derive(Debug)]
pub struct BertForSequenceClassification {
    encoder: BertEncoder,
    dropout: Dropout,
    classifier: Linear,
    num_labels: usize,
}

impl BertForSequenceClassification {
    /// Builds the model from `vb`.
    pub fn new(cfg: &BertConfig, num_labels: usize, vb: VarBuilder) -> Result<Self> {
        let encoder = BertEncoder::new(cfg, &vb)?;
        Ok(Self {
            encoder,
            dropout: Dropout::new(cfg.hidden_dropout_prob, 0xBE27_C000),
            classifier: Linear::new(
                cfg.hidden_size,
                num_labels,
                true,
                cfg.initializer_range,
                vb.pp("classifier"),
            )?,
            num_labels,
        })
    }

    /// A freshly initialized model.
    pub fn init(
        cfg: &BertConfig,
        num_labels: usize,
        seed: u64,
        device: &Device,
    ) -> Result<(Self, ParamStore)> {
        let store = ParamStore::new(seed);
        let model = Self::new(cfg, num_labels, store.var_builder(DType::F32, device))?;
        Ok((model, store))
    }

    /// Loads the encoder from any BERT checkpoint directory (pretraining heads in the file are
    /// ignored); a classifier absent from the file is freshly initialized, and the names of the
    /// freshly initialized tensors are returned.
    pub fn from_hf_dir(
        dir: &std::path::Path,
        num_labels: usize,
        seed: u64,
        device: &Device,
    ) -> Result<(Self, ParamStore, Vec<String>)> {
        let cfg: BertConfig = crate::hf::read_config(dir, &["bert"])?;
        let store = crate::hf::store_for(dir, seed)?;
        let model = Self::new(&cfg, num_labels, store.var_builder(DType::F32, device))?;
        // Any BERT layout: with or without the `bert.` prefix (`BertModel`), pretraining heads
        // ignored; a classifier (and a pooler) absent from the file start fresh.
        let fresh =
            store.load_safetensors_layout(&dir.join("model.safetensors"), "bert.", |n| {
                n.starts_with("classifier.") || n.starts_with("bert.pooler.")
            })?;
        Ok((model, store, fresh))
    }

    /// The configuration.
    pub fn config(&self) -> &BertConfig {
        self.encoder.config()
    }

    /// As HuggingFace's `config.json` for `BertForSequenceClassification`.
    pub fn hf_config(&self) -> serde_json::Value {
        let mut v = self.config().to_hf_json();
        v["architectures"] = serde_json::json!(["BertForSequenceClassification"]);
        let labels: serde_json::Map<String, serde_json::Value> = (0..self.num_labels)
            .map(|i| (i.to_string(), format!("LABEL_{i}").into()))
            .collect();
        v["id2label"] = labels.into();
        v
    }

    /// Class logits `[b, num_labels]`.
    pub fn forward(
        &self,
        input_ids: &Tensor,
        token_type_ids: Option<&Tensor>,
        attention_mask: Option<&Tensor>,
        ctx: &StepContext,
    ) -> Result<Tensor> {
        let out = self
            .encoder
            .encode(input_ids, token_type_ids, attention_mask, ctx)?;
        let pooled = self.dropout.forward(&out.pooled, ctx)?;
        Ok(self.classifier.forward(&pooled, ctx)?)
    }
}
