//! T5 (encoder-decoder, text-to-text), laid out as HuggingFace's `T5ForConditionalGeneration`.
//!
//! Differences from the other transformers, all as in the paper and in transformers:
//! RMS norm with a gain and no mean or bias (`y = x/√(mean(x²) + ε)·γ`) before each sub-layer
//! (pre-norm); no biases anywhere; no absolute positions but a learned scalar bias per head for
//! each bucketed relative distance, added to the attention scores (computed in the first layer,
//! shared by the others); no `1/√d` scaling of the scores (folded into the initialization);
//! v1.0 ReLU or v1.1 gated-GELU feed-forward; a tied head rescales by `d_model^−½`.

use candle_core::{DType, Device, Tensor};
use candle_nn::{Init, VarBuilder};
use serde::{Deserialize, Serialize};

use crate::context::StepContext;
use crate::error::{ModelError, Result};
use crate::layers::{
    attention, embedding, lookup, merge_heads, padding_bias, split_heads, KvCache, Linear,
};
use crate::layers::{checkpointed, Dropout, WithDropouts};
use crate::params::ParamStore;
use crate::seq2seq::{EncoderDecoder, GenerationConfig};
use lm_kernels::ops::{biased_attention, gelu, residual_add, rms_norm};
use std::sync::Arc;

/// T5 hyperparameters, with HuggingFace `T5Config` key names (other keys are kept in `extra`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct T5Config {
    /// Vocabulary size (sentinels included).
    pub vocab_size: usize,
    /// Width.
    pub d_model: usize,
    /// Width of each head.
    pub d_kv: usize,
    /// Feed-forward width.
    pub d_ff: usize,
    /// Encoder layers.
    pub num_layers: usize,
    /// Decoder layers (default: `num_layers`).
    #[serde(default)]
    pub num_decoder_layers: Option<usize>,
    /// Heads.
    pub num_heads: usize,
    /// Relative-position buckets.
    #[serde(default = "buckets")]
    pub relative_attention_num_buckets: usize,
    /// Distances beyond this share the last bucket.
    #[serde(default = "max_distance")]
    pub relative_attention_max_distance: usize,
    /// Dropout.
    #[serde(default)]
    pub dropout_rate: f64,
    /// RMS norm ε.
    #[serde(default = "eps")]
    pub layer_norm_epsilon: f64,
    /// `"relu"` (v1.0) or `"gated-gelu"` (v1.1).
    #[serde(default = "relu")]
    pub feed_forward_proj: String,
    /// Tie the LM head to the shared embedding (v1.0; the original v1.1 checkpoints are untied).
    #[serde(default = "yes")]
    pub tie_word_embeddings: bool,
    /// Multiply the decoder output by `d_model^−½` before the head. Absent in older configs, where
    /// it follows `tie_word_embeddings` (transformers ≥ 5 writes it, and always ties).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale_decoder_outputs: Option<bool>,
    /// Padding id (also the decoder start).
    #[serde(default)]
    pub pad_token_id: u32,
    /// End of sequence.
    #[serde(default = "one")]
    pub eos_token_id: u32,
    /// First decoder input.
    #[serde(default)]
    pub decoder_start_token_id: u32,
    /// Keys of a loaded `config.json` that this type does not model (generation settings such
    /// as `forced_eos_token_id`, `task_specific_params`, …), written back unchanged on save.
    #[serde(flatten, default)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

fn buckets() -> usize {
    32
}
fn max_distance() -> usize {
    128
}
fn eps() -> f64 {
    1e-6
}
fn relu() -> String {
    "relu".into()
}
fn yes() -> bool {
    true
}
fn one() -> u32 {
    1
}

impl T5Config {
    /// T5-small (v1.0): d = 512, 6 + 6 layers, 8 heads, 32128 tokens (≈ 60 M parameters).
    pub fn small() -> Self {
        Self {
            vocab_size: 32128,
            d_model: 512,
            d_kv: 64,
            d_ff: 2048,
            num_layers: 6,
            num_decoder_layers: None,
            num_heads: 8,
            relative_attention_num_buckets: 32,
            relative_attention_max_distance: 128,
            dropout_rate: 0.1,
            layer_norm_epsilon: 1e-6,
            feed_forward_proj: "relu".into(),
            tie_word_embeddings: true,
            scale_decoder_outputs: None,
            pad_token_id: 0,
            eos_token_id: 1,
            decoder_start_token_id: 0,
            extra: serde_json::Map::new(),
        }
    }

    /// A tiny model for tests (no dropout).
    pub fn tiny(vocab_size: usize) -> Self {
        Self {
            vocab_size,
            d_model: 16,
            d_kv: 8,
            d_ff: 32,
            num_layers: 2,
            num_heads: 2,
            dropout_rate: 0.0,
            relative_attention_num_buckets: 8,
            relative_attention_max_distance: 16,
            ..Self::small()
        }
    }

    fn decoder_layers(&self) -> usize {
        self.num_decoder_layers.unwrap_or(self.num_layers)
    }

    /// Whether the decoder output is rescaled by `d_model^−½` before the head.
    pub fn scales_decoder_output(&self) -> bool {
        self.scale_decoder_outputs
            .unwrap_or(self.tie_word_embeddings)
    }

    fn gated(&self) -> bool {
        self.feed_forward_proj.starts_with("gated")
    }

    /// Checks the configuration.
    pub fn validate(&self) -> Result<()> {
        if !matches!(self.feed_forward_proj.as_str(), "relu" | "gated-gelu") {
            return Err(ModelError::BadConfig {
                key: "feed_forward_proj",
                problem: format!(
                    "{:?} is not \"relu\" or \"gated-gelu\"",
                    self.feed_forward_proj
                ),
            });
        }
        if self.num_heads == 0 || self.d_kv == 0 {
            return Err(ModelError::BadConfig {
                key: "num_heads",
                problem: "num_heads and d_kv must be positive".into(),
            });
        }
        Ok(())
    }

    /// Parameters (shared embedding once; the LM head when untied).
    pub fn num_params(&self) -> usize {
        let (d, inner, ff) = (self.d_model, self.num_heads * self.d_kv, self.d_ff);
        let attn = 4 * d * inner;
        let ffn = if self.gated() { 3 * d * ff } else { 2 * d * ff };
        let rel = self.relative_attention_num_buckets * self.num_heads;
        let enc = self.num_layers * (attn + ffn + 2 * d) + rel + d;
        let dec = self.decoder_layers() * (2 * attn + ffn + 3 * d) + rel + d;
        let head = if self.tie_word_embeddings {
            0
        } else {
            self.vocab_size * d
        };
        self.vocab_size * d + enc + dec + head
    }

    /// Training FLOPs per token, `6·N + 12·L·inner·t`.
    pub fn flops_per_token(&self, t: usize) -> f64 {
        6.0 * self.num_params() as f64
            + 12.0
                * ((self.num_layers + self.decoder_layers()) * self.num_heads * self.d_kv * t)
                    as f64
    }

    /// As HuggingFace's `config.json`.
    pub fn to_hf_json(&self) -> serde_json::Value {
        // INVARIANT: a struct of numbers, strings and string-keyed maps always serializes to JSON.
        let mut v = serde_json::to_value(self).expect("serializes");
        v["num_decoder_layers"] = self.decoder_layers().into();
        v["model_type"] = "t5".into();
        v["architectures"] = serde_json::json!(["T5ForConditionalGeneration"]);
        v["is_encoder_decoder"] = true.into();
        v
    }
}

/// T5's bucket of a relative position `memory − query`: exact buckets for small distances,
/// logarithmic up to `max_distance`; bidirectional attention splits the buckets by sign.
pub fn relative_position_bucket(
    relative: i64,
    bidirectional: bool,
    num_buckets: usize,
    max_distance: usize,
) -> usize {
    let mut buckets = num_buckets as i64;
    let mut ret = 0i64;
    let mut n = relative;
    if bidirectional {
        buckets /= 2;
        if n > 0 {
            ret += buckets;
        }
        n = n.abs();
    } else {
        n = (-n).max(0);
    }
    let max_exact = buckets / 2;
    if n < max_exact {
        ret += n;
    } else {
        let large = max_exact
            + ((n as f32 / max_exact as f32).ln() / (max_distance as f32 / max_exact as f32).ln()
                * (buckets - max_exact) as f32) as i64;
        ret += large.min(buckets - 1);
    }
    ret as usize
}

#[derive(Debug)]
struct Attention {
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    heads: usize,
    relative_bias: Option<Tensor>,
}

impl Attention {
    fn new(cfg: &T5Config, has_bias: bool, vb: VarBuilder) -> candle_core::Result<Self> {
        let (d, inner) = (cfg.d_model, cfg.num_heads * cfg.d_kv);
        let std = |x: usize| (x as f64).powf(-0.5);
        Ok(Self {
            q: Linear::new(d, inner, false, std(d * cfg.d_kv), vb.pp("q"))?,
            k: Linear::new(d, inner, false, std(d), vb.pp("k"))?,
            v: Linear::new(d, inner, false, std(d), vb.pp("v"))?,
            o: Linear::new(inner, d, false, std(inner), vb.pp("o"))?,
            heads: cfg.num_heads,
            relative_bias: if has_bias {
                Some(vb.pp("relative_attention_bias").get_with_hints(
                    (cfg.relative_attention_num_buckets, cfg.num_heads),
                    "weight",
                    Init::Randn {
                        mean: 0.0,
                        stdev: std(d),
                    },
                )?)
            } else {
                None
            },
        })
    }

    /// The position bias `[1, h, q, k]` for queries at `offset..offset + q` and keys `0..k`.
    fn position_bias(
        &self,
        cfg: &T5Config,
        q: usize,
        k: usize,
        offset: usize,
        bidirectional: bool,
    ) -> candle_core::Result<Tensor> {
        let table = self
            .relative_bias
            .as_ref()
            // INVARIANT: only the first block of a stack owns the relative-position table, and only it calls this.
            .expect("only called on the first layer");
        let ids: Vec<u32> = (0..q)
            .flat_map(|i| {
                (0..k).map(move |j| {
                    relative_position_bucket(
                        j as i64 - (i + offset) as i64,
                        bidirectional,
                        cfg.relative_attention_num_buckets,
                        cfg.relative_attention_max_distance,
                    ) as u32
                })
            })
            .collect();
        let ids = Tensor::from_vec(ids, q * k, table.device())?;
        table
            .embedding(&ids)?
            .reshape((q, k, self.heads))?
            .permute((2, 0, 1))?
            .unsqueeze(0)
    }

    fn kv(&self, x: &Tensor, ctx: &StepContext) -> candle_core::Result<(Tensor, Tensor)> {
        Ok((
            split_heads(&self.k.forward(x, ctx)?, self.heads)?,
            split_heads(&self.v.forward(x, ctx)?, self.heads)?,
        ))
    }

    /// Attention of `x` over `src` (itself, or the encoder output) in one fused op: the
    /// queries, the packed keys and values, and the bias (with its gradient) — the training
    /// path, without a cache.
    fn attend_fused(
        &self,
        x: &Tensor,
        src: &Tensor,
        bias: Option<&Tensor>,
        causal: bool,
        ctx: &StepContext,
    ) -> candle_core::Result<Tensor> {
        let q = self.q.forward(x, ctx)?;
        let kv = Linear::forward_packed(&[&self.k, &self.v], src, ctx)?;
        let zeros;
        let bias = match bias {
            Some(b) => b,
            None => {
                zeros = Tensor::zeros((1, 1, q.dim(1)?, kv.dim(1)?), q.dtype(), q.device())?;
                &zeros
            }
        };
        let heads = (self.heads, 1.0);
        let y = biased_attention((&q, &kv), bias, heads, causal, None, ctx.precision)?;
        self.o.forward(&y, ctx)
    }

    fn attend(
        &self,
        x: &Tensor,
        (k, v): (&Tensor, &Tensor),
        bias: Option<&Tensor>,
        causal: bool,
        ctx: &StepContext,
    ) -> candle_core::Result<Tensor> {
        let q = split_heads(&self.q.forward(x, ctx)?, self.heads)?;
        let y = attention((&q, k, v), bias, 1.0, causal, ctx)?;
        self.o.forward(&merge_heads(&y)?, ctx)
    }
}

#[derive(Debug)]
struct FeedForward {
    wi: Vec<Linear>,
    wo: Linear,
    gated: bool,
}

impl FeedForward {
    fn new(cfg: &T5Config, vb: VarBuilder) -> candle_core::Result<Self> {
        let (d, ff) = (cfg.d_model, cfg.d_ff);
        let std_in = (d as f64).powf(-0.5);
        let wi = if cfg.gated() {
            vec![
                Linear::new(d, ff, false, std_in, vb.pp("wi_0"))?,
                Linear::new(d, ff, false, std_in, vb.pp("wi_1"))?,
            ]
        } else {
            vec![Linear::new(d, ff, false, std_in, vb.pp("wi"))?]
        };
        Ok(Self {
            wi,
            wo: Linear::new(ff, d, false, (ff as f64).powf(-0.5), vb.pp("wo"))?,
            gated: cfg.gated(),
        })
    }

    /// v1.0: `wo(ReLU(wi x))`; v1.1: `wo(GELU(wi_0 x) ⊙ wi_1 x)`.
    fn forward(
        &self,
        x: &Tensor,
        drop: &Dropout,
        ctx: &StepContext,
    ) -> candle_core::Result<Tensor> {
        let h = if self.gated {
            (gelu(&self.wi[0].forward(x, ctx)?)? * self.wi[1].forward(x, ctx)?)?
        } else {
            self.wi[0].forward(x, ctx)?.relu()?
        };
        self.wo.forward(&drop.forward(&h, ctx)?, ctx)
    }
}

#[derive(Debug)]
struct Block {
    self_attn: Attention,
    self_ln: Tensor,
    cross: Option<(Attention, Tensor)>,
    ffn: FeedForward,
    ffn_ln: Tensor,
}

impl Block {
    fn new(
        cfg: &T5Config,
        first: bool,
        decoder: bool,
        vb: VarBuilder,
    ) -> candle_core::Result<Self> {
        let ln = |vb: VarBuilder| vb.get_with_hints(cfg.d_model, "weight", Init::Const(1.0));
        let l = vb.pp("layer");
        let ff_index = if decoder { 2 } else { 1 };
        Ok(Self {
            self_attn: Attention::new(cfg, first, l.pp(0).pp("SelfAttention"))?,
            self_ln: ln(l.pp(0).pp("layer_norm"))?,
            cross: if decoder {
                Some((
                    Attention::new(cfg, false, l.pp(1).pp("EncDecAttention"))?,
                    ln(l.pp(1).pp("layer_norm"))?,
                ))
            } else {
                None
            },
            ffn: FeedForward::new(cfg, l.pp(ff_index).pp("DenseReluDense"))?,
            ffn_ln: ln(l.pp(ff_index).pp("layer_norm"))?,
        })
    }
}

impl Block {
    /// An encoder block (pre-norm, RMS): `h + drop(attn(norm(h)))`, then `h + drop(ffn(norm(h)))`;
    /// `drop` is the model's dropout and the norms' ε.
    fn encoder_step(
        &self,
        h: &Tensor,
        bias: &Tensor,
        (drop, eps): (&Dropout, f64),
        ctx: &StepContext,
    ) -> candle_core::Result<Tensor> {
        let x = rms_norm(h, &self.self_ln, eps)?;
        let a = self
            .self_attn
            .attend_fused(&x, &x, Some(bias), false, ctx)?;
        let h = residual_add(h, &drop.forward(&a, ctx)?)?;
        self.feed_forward(&h, (drop, eps), ctx)
    }

    /// `h + drop(ffn(norm(h)))`.
    fn feed_forward(
        &self,
        h: &Tensor,
        (drop, eps): (&Dropout, f64),
        ctx: &StepContext,
    ) -> candle_core::Result<Tensor> {
        let x = rms_norm(h, &self.ffn_ln, eps)?;
        let f = self.ffn.forward(&x, drop, ctx)?;
        residual_add(h, &drop.forward(&f, ctx)?)
    }

    /// A decoder block over `(h, encoder)`: causal self-attention with `self_bias`, cross-attention
    /// to the encoder with `cross_bias`, the feed-forward; with a cache, `h` holds only the new
    /// positions and their keys and values are appended to layer `i`'s.
    fn decoder_step(
        &self,
        (h, encoder): (&Tensor, &Tensor),
        (self_bias, cross_bias): (&Tensor, Option<&Tensor>),
        (drop, eps): (&Dropout, f64),
        mut cache: Option<(&mut KvCache, usize)>,
        ctx: &StepContext,
    ) -> candle_core::Result<Tensor> {
        let x = rms_norm(h, &self.self_ln, eps)?;
        let a = match cache.as_mut() {
            Some((c, i)) => {
                let (k, v) = self.self_attn.kv(&x, ctx)?;
                let (k, v) = c.append(*i, k, v)?;
                self.self_attn
                    .attend(&x, (&k, &v), Some(self_bias), true, ctx)?
            }
            None => self
                .self_attn
                .attend_fused(&x, &x, Some(self_bias), true, ctx)?,
        };
        let h = residual_add(h, &drop.forward(&a, ctx)?)?;
        let (cross, ln) = self
            .cross
            .as_ref()
            // INVARIANT: every decoder block is built with cross-attention (`Block::new` with `decoder = true`).
            .expect("decoder blocks have cross-attention");
        let x = rms_norm(&h, ln, eps)?;
        let a = match cache {
            Some((c, i)) => {
                let (ck, cv) = c.cross(i, || cross.kv(encoder, ctx))?;
                cross.attend(&x, (&ck, &cv), cross_bias, false, ctx)?
            }
            None => cross.attend_fused(&x, encoder, cross_bias, false, ctx)?,
        };
        let h = residual_add(&h, &drop.forward(&a, ctx)?)?;
        self.feed_forward(&h, (drop, eps), ctx)
    }
}

/// `T5ForConditionalGeneration`.
#[derive(Debug)]
pub struct T5 {
    cfg: T5Config,
    shared: Tensor,
    encoder: Vec<Arc<Block>>,
    enc_final: Tensor,
    decoder: Vec<Arc<Block>>,
    dec_final: Tensor,
    lm_head: Option<Linear>,
    dropout: Arc<Dropout>,
}

impl T5 {
    /// Builds the model from `vb` with HuggingFace names, creating missing parameters with T5's
    /// initialization (see [`lm_optim::init::t5_std`]).
    pub fn new(cfg: &T5Config, vb: VarBuilder) -> Result<Self> {
        cfg.validate()?;
        let blocks = |decoder: bool, n: usize| -> candle_core::Result<Vec<Arc<Block>>> {
            let root = vb.pp(if decoder { "decoder" } else { "encoder" });
            (0..n)
                .map(|i| Block::new(cfg, i == 0, decoder, root.pp("block").pp(i)).map(Arc::new))
                .collect()
        };
        let final_ln = |name: &str| {
            vb.pp(name).pp("final_layer_norm").get_with_hints(
                cfg.d_model,
                "weight",
                Init::Const(1.0),
            )
        };
        Ok(Self {
            shared: embedding(cfg.vocab_size, cfg.d_model, 1.0, vb.pp("shared"))?,
            encoder: blocks(false, cfg.num_layers)?,
            enc_final: final_ln("encoder")?,
            decoder: blocks(true, cfg.decoder_layers())?,
            dec_final: final_ln("decoder")?,
            lm_head: if cfg.tie_word_embeddings {
                None
            } else {
                Some(Linear::new(
                    cfg.d_model,
                    cfg.vocab_size,
                    false,
                    1.0,
                    vb.pp("lm_head"),
                )?)
            },
            dropout: Arc::new(Dropout::new(cfg.dropout_rate, 0x75_0000)),
            cfg: cfg.clone(),
        })
    }

    /// A freshly initialized model and its parameters.
    pub fn init(cfg: &T5Config, seed: u64, device: &Device) -> Result<(Self, ParamStore)> {
        let store = ParamStore::new(seed);
        let model = Self::new(cfg, store.var_builder(DType::F32, device))?;
        Ok((model, store))
    }

    /// Loads a HuggingFace `T5ForConditionalGeneration` directory.
    pub fn from_hf_dir(dir: &std::path::Path, device: &Device) -> Result<(Self, ParamStore)> {
        let cfg: T5Config = crate::hf::read_config(dir, &["t5"])?;
        let store = crate::hf::store_for(dir, 0)?;
        let model = Self::new(&cfg, store.var_builder(DType::F32, device))?;
        // `T5Model` checkpoints of untied (v1.1) models carry no `lm_head`: it starts fresh.
        store.load_safetensors_layout(&dir.join("model.safetensors"), "", |n| {
            n.starts_with("lm_head.")
        })?;
        Ok((model, store))
    }

    /// Writes a HuggingFace directory (`config.json`, `model.safetensors`) that transformers'
    /// `from_pretrained` loads.
    pub fn save_hf_dir(&self, store: &ParamStore, dir: &std::path::Path) -> Result<()> {
        crate::hf::save_dir(store, &self.cfg.to_hf_json(), dir)
    }

    /// The configuration.
    pub fn config(&self) -> &T5Config {
        &self.cfg
    }

    fn norm(&self, x: &Tensor, gamma: &Tensor) -> candle_core::Result<Tensor> {
        rms_norm(x, gamma, self.cfg.layer_norm_epsilon)
    }

    /// Block `b` with the model's dropout, as a recomputation owns it.
    fn with_dropout(&self, b: &Arc<Block>) -> Arc<WithDropouts<Block>> {
        Arc::new(WithDropouts {
            block: b.clone(),
            dropouts: vec![self.dropout.clone()],
        })
    }
}

impl EncoderDecoder for T5 {
    /// Encoder states `[b, t, d]`.
    fn encode(
        &self,
        input_ids: &Tensor,
        attention_mask: Option<&Tensor>,
        ctx: &StepContext,
    ) -> Result<Tensor> {
        let t = input_ids.dim(1)?;
        let mut h = self
            .dropout
            .forward(&lookup(&self.shared, input_ids)?, ctx)?;
        let mut bias = self.encoder[0]
            .self_attn
            .position_bias(&self.cfg, t, t, 0, true)?;
        if let Some(m) = attention_mask {
            bias = bias.broadcast_add(&padding_bias(m)?.to_dtype(bias.dtype())?)?;
        }
        for (i, b) in self.encoder.iter().enumerate() {
            let part = self.with_dropout(b);
            let (ctx, eps) = (*ctx, self.cfg.layer_norm_epsilon);
            // The position bias is made from block 0's parameters: an argument (not a
            // capture), so that its gradient comes back through the recomputation.
            let run = move |p: &WithDropouts<Block>, xs: &[Tensor]| {
                p.block
                    .encoder_step(&xs[0], &xs[1], (&p.dropouts[0], eps), &ctx)
            };
            let recompute = ctx.recompute.block(i);
            let inputs = [h, bias.clone()];
            h = checkpointed(recompute, part, WithDropouts::dropouts, &inputs, run)?;
        }
        Ok(self
            .dropout
            .forward(&self.norm(&h, &self.enc_final)?, ctx)?)
    }

    /// Decoder logits `[b, t, V]`; with a cache, only new positions are passed.
    fn decode(
        &self,
        decoder_input_ids: &Tensor,
        encoder: &Tensor,
        encoder_mask: Option<&Tensor>,
        mut cache: Option<&mut KvCache>,
        ctx: &StepContext,
    ) -> Result<Tensor> {
        let t = decoder_input_ids.dim(1)?;
        let past = cache.as_ref().map_or(0, |c| c.len());
        let mut h = self
            .dropout
            .forward(&lookup(&self.shared, decoder_input_ids)?, ctx)?;
        let self_bias =
            self.decoder[0]
                .self_attn
                .position_bias(&self.cfg, t, past + t, past, false)?;
        let cross_bias = encoder_mask.map(padding_bias).transpose()?;
        let eps = self.cfg.layer_norm_epsilon;
        for (i, b) in self.decoder.iter().enumerate() {
            let biases = (&self_bias, cross_bias.as_ref());
            h = match cache.as_deref_mut() {
                Some(c) => {
                    let drop = (&*self.dropout, eps);
                    b.decoder_step((&h, encoder), biases, drop, Some((c, i)), ctx)?
                }
                None => {
                    let part = self.with_dropout(b);
                    let (ctx, cross_bias) = (*ctx, cross_bias.clone());
                    // The position bias is an argument, as in the encoder.
                    let run = move |p: &WithDropouts<Block>, xs: &[Tensor]| {
                        let biases = (&xs[2], cross_bias.as_ref());
                        let drop = (&*p.dropouts[0], eps);
                        p.block
                            .decoder_step((&xs[0], &xs[1]), biases, drop, None, &ctx)
                    };
                    let recompute = ctx.recompute.block(i);
                    let inputs = [h, encoder.clone(), self_bias.clone()];
                    checkpointed(recompute, part, WithDropouts::dropouts, &inputs, run)?
                }
            };
        }
        if let Some(c) = cache {
            c.advance(t);
        }
        let mut h = self
            .dropout
            .forward(&self.norm(&h, &self.dec_final)?, ctx)?;
        // T5 v1.0 rescales by d_model^−½ before reusing the embedding (Mesh TensorFlow's T5).
        if self.cfg.scales_decoder_output() {
            h = (h * (self.cfg.d_model as f64).powf(-0.5))?;
        }
        Ok(match &self.lm_head {
            Some(head) => head.forward(&h, ctx)?,
            None => Linear::from_weight(self.shared.clone(), None).forward(&h, ctx)?,
        })
    }

    fn generation_config(&self, max_new_tokens: usize) -> GenerationConfig {
        let c = &self.cfg;
        GenerationConfig::from_model_config(
            max_new_tokens,
            c.decoder_start_token_id,
            c.eos_token_id,
            c.pad_token_id,
            &c.extra,
        )
    }
}
