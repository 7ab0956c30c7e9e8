//! BART (encoder-decoder denoiser), laid out as HuggingFace's `BartForConditionalGeneration`.
//!
//! The encoder reads the corrupted text bidirectionally, the decoder reconstructs the original
//! left to right with cross-attention to the encoder (the chapter's `p(y | x)`). Both use learned
//! positions (offset by 2, as fairseq), an embedding LayerNorm and post-LayerNorm layers; the
//! token embedding is shared by encoder, decoder and the LM head, which adds `final_logits_bias`.

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use serde::{Deserialize, Serialize};

use crate::context::StepContext;
use crate::error::{ModelError, Result};
use crate::layers::{
    attention, embedding, lookup, merge_heads, padding_bias, split_heads, KvCache, LayerNorm,
    Linear,
};
use crate::layers::{checkpointed, Dropout, WithDropouts};
use crate::params::ParamStore;
use crate::seq2seq::{EncoderDecoder, GenerationConfig};
use lm_kernels::ops::{add_bias, residual_add, Gelu};
use std::sync::Arc;

/// BART hyperparameters, with HuggingFace `BartConfig` key names (other keys are kept in `extra`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BartConfig {
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Width d.
    pub d_model: usize,
    /// Encoder layers.
    pub encoder_layers: usize,
    /// Decoder layers.
    pub decoder_layers: usize,
    /// Encoder heads.
    pub encoder_attention_heads: usize,
    /// Decoder heads.
    pub decoder_attention_heads: usize,
    /// Encoder feed-forward width.
    pub encoder_ffn_dim: usize,
    /// Decoder feed-forward width.
    pub decoder_ffn_dim: usize,
    /// Learned positions (the table has 2 more rows).
    pub max_position_embeddings: usize,
    /// Dropout on hidden states.
    #[serde(default)]
    pub dropout: f64,
    /// Dropout on attention probabilities.
    #[serde(default)]
    pub attention_dropout: f64,
    /// Dropout after the feed-forward activation.
    #[serde(default)]
    pub activation_dropout: f64,
    /// Initialization standard deviation.
    #[serde(default = "init_std")]
    pub init_std: f64,
    /// Multiply embeddings by √d.
    #[serde(default)]
    pub scale_embedding: bool,
    /// Padding id.
    #[serde(default = "one")]
    pub pad_token_id: u32,
    /// Beginning of sequence.
    #[serde(default)]
    pub bos_token_id: u32,
    /// End of sequence.
    #[serde(default = "two")]
    pub eos_token_id: u32,
    /// First decoder input.
    #[serde(default = "two")]
    pub decoder_start_token_id: u32,
    /// Keys of a loaded `config.json` that this type does not model (generation settings such
    /// as `forced_eos_token_id`, `task_specific_params`, …), written back unchanged on save.
    #[serde(flatten, default)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

fn init_std() -> f64 {
    0.02
}
fn one() -> u32 {
    1
}
fn two() -> u32 {
    2
}

const POSITION_OFFSET: usize = 2;

impl BartConfig {
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
            d_model: d,
            encoder_layers: layers,
            decoder_layers: layers,
            encoder_attention_heads: heads,
            decoder_attention_heads: heads,
            encoder_ffn_dim: ff,
            decoder_ffn_dim: ff,
            max_position_embeddings: positions,
            dropout: 0.1,
            attention_dropout: 0.0,
            activation_dropout: 0.0,
            init_std: 0.02,
            scale_embedding: false,
            pad_token_id: 1,
            bos_token_id: 0,
            eos_token_id: 2,
            decoder_start_token_id: 2,
            extra: serde_json::Map::new(),
        }
    }

    /// BART-base: 6 + 6 layers, 12 heads, d = 768, 50265 tokens (≈ 139 M parameters).
    pub fn base() -> Self {
        Self::sized(50265, 768, 6, 12, 3072, 1024)
    }

    /// A tiny model for tests (no dropout).
    pub fn tiny(vocab_size: usize) -> Self {
        Self {
            dropout: 0.0,
            ..Self::sized(vocab_size, 16, 2, 2, 32, 32)
        }
    }

    /// Checks the sizes agree.
    pub fn validate(&self) -> Result<()> {
        for (heads, key) in [
            (self.encoder_attention_heads, "encoder_attention_heads"),
            (self.decoder_attention_heads, "decoder_attention_heads"),
        ] {
            if heads == 0 || !self.d_model.is_multiple_of(heads) {
                return Err(ModelError::BadConfig {
                    key,
                    problem: format!("d_model = {} is not divisible by {heads}", self.d_model),
                });
            }
        }
        Ok(())
    }

    /// Parameters (shared embedding counted once; `final_logits_bias` is a buffer, not counted).
    pub fn num_params(&self) -> usize {
        let d = self.d_model;
        let attn = 4 * (d * d + d);
        let ln = 2 * d;
        let pos = (self.max_position_embeddings + POSITION_OFFSET) * d;
        let enc = self.encoder_layers
            * (attn
                + ln
                + (d * self.encoder_ffn_dim + self.encoder_ffn_dim)
                + (self.encoder_ffn_dim * d + d)
                + ln);
        let dec = self.decoder_layers
            * (2 * (attn + ln)
                + (d * self.decoder_ffn_dim + self.decoder_ffn_dim)
                + (self.decoder_ffn_dim * d + d)
                + ln);
        self.vocab_size * d + 2 * (pos + ln) + enc + dec
    }

    /// Training FLOPs per (decoder) token, `6·N + 12·L·d·t` with L all layers.
    pub fn flops_per_token(&self, t: usize) -> f64 {
        6.0 * self.num_params() as f64
            + 12.0 * ((self.encoder_layers + self.decoder_layers) * self.d_model * t) as f64
    }

    /// As HuggingFace's `config.json`.
    pub fn to_hf_json(&self) -> serde_json::Value {
        // INVARIANT: a struct of numbers, strings and string-keyed maps always serializes to JSON.
        let mut v = serde_json::to_value(self).expect("serializes");
        v["model_type"] = "bart".into();
        v["architectures"] = serde_json::json!(["BartForConditionalGeneration"]);
        v["activation_function"] = "gelu".into();
        v["is_encoder_decoder"] = true.into();
        v["tie_word_embeddings"] = true.into();
        // transformers' default: no forced end token, unless the loaded config set one.
        if v.get("forced_eos_token_id").is_none() {
            v["forced_eos_token_id"] = serde_json::Value::Null;
        }
        v
    }
}

#[derive(Debug)]
struct Attention {
    q: Linear,
    k: Linear,
    v: Linear,
    out: Linear,
    heads: usize,
}

impl Attention {
    fn new(d: usize, heads: usize, std: f64, vb: VarBuilder) -> candle_core::Result<Self> {
        Ok(Self {
            q: Linear::new(d, d, true, std, vb.pp("q_proj"))?,
            k: Linear::new(d, d, true, std, vb.pp("k_proj"))?,
            v: Linear::new(d, d, true, std, vb.pp("v_proj"))?,
            out: Linear::new(d, d, true, std, vb.pp("out_proj"))?,
            heads,
        })
    }

    fn kv(&self, x: &Tensor, ctx: &StepContext) -> candle_core::Result<(Tensor, Tensor)> {
        Ok((
            split_heads(&self.k.forward(x, ctx)?, self.heads)?,
            split_heads(&self.v.forward(x, ctx)?, self.heads)?,
        ))
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
        let scale = 1.0 / (q.dim(3)? as f64).sqrt();
        let y = attention((&q, k, v), bias, scale, causal, ctx)?;
        self.out.forward(&merge_heads(&y)?, ctx)
    }
}

#[derive(Debug)]
struct FeedForward {
    fc1: Linear,
    fc2: Linear,
    ln: LayerNorm,
}

impl FeedForward {
    fn new(d: usize, ff: usize, std: f64, vb: &VarBuilder) -> candle_core::Result<Self> {
        Ok(Self {
            fc1: Linear::new(d, ff, true, std, vb.pp("fc1"))?,
            fc2: Linear::new(ff, d, true, std, vb.pp("fc2"))?,
            ln: LayerNorm::new(d, 1e-5, vb.pp("final_layer_norm"))?,
        })
    }

    fn forward(
        &self,
        h: &Tensor,
        drop: &Dropout,
        act_drop: &Dropout,
        ctx: &StepContext,
    ) -> candle_core::Result<Tensor> {
        let a = act_drop.forward(&self.fc1.forward_gelu(h, Gelu::Erf, ctx)?, ctx)?;
        let f = self.fc2.forward(&a, ctx)?;
        self.ln.forward(&residual_add(h, &drop.forward(&f, ctx)?)?)
    }
}

#[derive(Debug)]
struct EncoderLayer {
    attn: Attention,
    attn_ln: LayerNorm,
    ffn: FeedForward,
}

#[derive(Debug)]
struct DecoderLayer {
    self_attn: Attention,
    self_ln: LayerNorm,
    cross_attn: Attention,
    cross_ln: LayerNorm,
    ffn: FeedForward,
}

impl EncoderLayer {
    /// Post-LN: `h = LN(x + drop(attn(x)))`, then the feed-forward; `drop` and `act_drop` are
    /// the model's dropouts.
    fn forward(
        &self,
        h: &Tensor,
        bias: Option<&Tensor>,
        (drop, act_drop): (&Dropout, &Dropout),
        ctx: &StepContext,
    ) -> candle_core::Result<Tensor> {
        let (k, v) = self.attn.kv(h, ctx)?;
        let a = self.attn.attend(h, (&k, &v), bias, false, ctx)?;
        let h2 = self
            .attn_ln
            .forward(&residual_add(h, &drop.forward(&a, ctx)?)?)?;
        self.ffn.forward(&h2, drop, act_drop, ctx)
    }
}

impl DecoderLayer {
    /// Causal self-attention, cross-attention to `encoder` (padding `bias`), the feed-forward,
    /// each post-LN; with a cache, `h` holds only the new positions and their keys and values
    /// are appended to layer `i`'s.
    fn forward(
        &self,
        (h, encoder): (&Tensor, &Tensor),
        bias: Option<&Tensor>,
        (drop, act_drop): (&Dropout, &Dropout),
        mut cache: Option<(&mut KvCache, usize)>,
        ctx: &StepContext,
    ) -> candle_core::Result<Tensor> {
        let (k, v) = self.self_attn.kv(h, ctx)?;
        let (k, v) = match cache.as_mut() {
            Some((c, i)) => c.append(*i, k, v)?,
            None => (k, v),
        };
        let a = self.self_attn.attend(h, (&k, &v), None, true, ctx)?;
        let h1 = self
            .self_ln
            .forward(&residual_add(h, &drop.forward(&a, ctx)?)?)?;
        let (ck, cv) = match cache {
            Some((c, i)) => c.cross(i, || self.cross_attn.kv(encoder, ctx))?,
            None => self.cross_attn.kv(encoder, ctx)?,
        };
        let a = self.cross_attn.attend(&h1, (&ck, &cv), bias, false, ctx)?;
        let h2 = self.cross_ln.forward(&(&h1 + drop.forward(&a, ctx)?)?)?;
        self.ffn.forward(&h2, drop, act_drop, ctx)
    }
}

/// `BartForConditionalGeneration`.
#[derive(Debug)]
pub struct Bart {
    cfg: BartConfig,
    shared: Tensor,
    enc_pos: Tensor,
    enc_ln: LayerNorm,
    enc_layers: Vec<Arc<EncoderLayer>>,
    dec_pos: Tensor,
    dec_ln: LayerNorm,
    dec_layers: Vec<Arc<DecoderLayer>>,
    final_logits_bias: Tensor,
    dropout: Arc<Dropout>,
    act_dropout: Arc<Dropout>,
}

impl Bart {
    /// Builds the model from `vb` with HuggingFace names, creating missing parameters with BART's
    /// initialization (`N(0, 0.02)`, zero biases).
    pub fn new(cfg: &BartConfig, vb: VarBuilder) -> Result<Self> {
        cfg.validate()?;
        let (d, std) = (cfg.d_model, cfg.init_std);
        let m = vb.pp("model");
        let enc = m.pp("encoder");
        let dec = m.pp("decoder");
        let npos = cfg.max_position_embeddings + POSITION_OFFSET;
        let enc_layers = (0..cfg.encoder_layers)
            .map(|i| {
                let l = enc.pp("layers").pp(i);
                Ok(Arc::new(EncoderLayer {
                    attn: Attention::new(d, cfg.encoder_attention_heads, std, l.pp("self_attn"))?,
                    attn_ln: LayerNorm::new(d, 1e-5, l.pp("self_attn_layer_norm"))?,
                    ffn: FeedForward::new(d, cfg.encoder_ffn_dim, std, &l)?,
                }))
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        let dec_layers = (0..cfg.decoder_layers)
            .map(|i| {
                let l = dec.pp("layers").pp(i);
                Ok(Arc::new(DecoderLayer {
                    self_attn: Attention::new(
                        d,
                        cfg.decoder_attention_heads,
                        std,
                        l.pp("self_attn"),
                    )?,
                    self_ln: LayerNorm::new(d, 1e-5, l.pp("self_attn_layer_norm"))?,
                    cross_attn: Attention::new(
                        d,
                        cfg.decoder_attention_heads,
                        std,
                        l.pp("encoder_attn"),
                    )?,
                    cross_ln: LayerNorm::new(d, 1e-5, l.pp("encoder_attn_layer_norm"))?,
                    ffn: FeedForward::new(d, cfg.decoder_ffn_dim, std, &l)?,
                }))
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        Ok(Self {
            shared: embedding(cfg.vocab_size, d, std, m.pp("shared"))?,
            enc_pos: embedding(npos, d, std, enc.pp("embed_positions"))?,
            enc_ln: LayerNorm::new(d, 1e-5, enc.pp("layernorm_embedding"))?,
            enc_layers,
            dec_pos: embedding(npos, d, std, dec.pp("embed_positions"))?,
            dec_ln: LayerNorm::new(d, 1e-5, dec.pp("layernorm_embedding"))?,
            dec_layers,
            final_logits_bias: vb.get_with_hints(
                (1, cfg.vocab_size),
                "final_logits_bias",
                candle_nn::Init::Const(0.0),
            )?,
            dropout: Arc::new(Dropout::new(cfg.dropout, 0xBA27_0000)),
            act_dropout: Arc::new(Dropout::new(cfg.activation_dropout, 0xBA27_1000)),
            cfg: cfg.clone(),
        })
    }

    /// A freshly initialized model and its parameters.
    pub fn init(cfg: &BartConfig, seed: u64, device: &Device) -> Result<(Self, ParamStore)> {
        let store = ParamStore::new(seed);
        let model = Self::new(cfg, store.var_builder(DType::F32, device))?;
        Ok((model, store))
    }

    /// Loads a HuggingFace `BartForConditionalGeneration` directory.
    pub fn from_hf_dir(dir: &std::path::Path, device: &Device) -> Result<(Self, ParamStore)> {
        let cfg: BartConfig = crate::hf::read_config(dir, &["bart"])?;
        let store = crate::hf::store_for(dir, 0)?;
        let model = Self::new(&cfg, store.var_builder(DType::F32, device))?;
        // `BartModel` checkpoints lack the `model.` prefix and the `final_logits_bias` buffer.
        store.load_safetensors_layout(&dir.join("model.safetensors"), "model.", |n| {
            Self::is_buffer(n)
        })?;
        Ok((model, store))
    }

    /// Writes a HuggingFace directory (`config.json`, `model.safetensors`) that transformers'
    /// `from_pretrained` loads.
    pub fn save_hf_dir(&self, store: &ParamStore, dir: &std::path::Path) -> Result<()> {
        crate::hf::save_dir(store, &self.cfg.to_hf_json(), dir)
    }

    /// The configuration.
    pub fn config(&self) -> &BartConfig {
        &self.cfg
    }

    /// Names of tensors that are buffers, not trained (`final_logits_bias`).
    pub fn is_buffer(name: &str) -> bool {
        name == "final_logits_bias"
    }

    fn embed(
        &self,
        ids: &Tensor,
        pos: &Tensor,
        start: usize,
        ln: &LayerNorm,
        ctx: &StepContext,
    ) -> candle_core::Result<Tensor> {
        let t = ids.dim(1)?;
        let mut x = lookup(&self.shared, ids)?;
        if self.cfg.scale_embedding {
            x = (x * (self.cfg.d_model as f64).sqrt())?;
        }
        let x = add_bias(&x, &pos.narrow(0, start + POSITION_OFFSET, t)?)?;
        self.dropout.forward(&ln.forward(&x)?, ctx)
    }

    fn check_len(&self, t: usize) -> Result<()> {
        if t > self.cfg.max_position_embeddings {
            return Err(ModelError::BadConfig {
                key: "max_position_embeddings",
                problem: format!("sequence of {t} tokens is too long"),
            });
        }
        Ok(())
    }
}

impl EncoderDecoder for Bart {
    /// Encoder states `[b, t, d]` for `input_ids` and an optional attention mask.
    fn encode(
        &self,
        input_ids: &Tensor,
        attention_mask: Option<&Tensor>,
        ctx: &StepContext,
    ) -> Result<Tensor> {
        self.check_len(input_ids.dim(1)?)?;
        let mut h = self.embed(input_ids, &self.enc_pos, 0, &self.enc_ln, ctx)?;
        let bias = attention_mask.map(padding_bias).transpose()?;
        for (i, l) in self.enc_layers.iter().enumerate() {
            let part = Arc::new(WithDropouts {
                block: l.clone(),
                dropouts: vec![self.dropout.clone(), self.act_dropout.clone()],
            });
            let (ctx, bias) = (*ctx, bias.clone());
            let run = move |p: &WithDropouts<EncoderLayer>, xs: &[Tensor]| {
                let drops = (&*p.dropouts[0], &*p.dropouts[1]);
                p.block.forward(&xs[0], bias.as_ref(), drops, &ctx)
            };
            let recompute = ctx.recompute.block(i);
            h = checkpointed(recompute, part, WithDropouts::dropouts, &[h], run)?;
        }
        Ok(h)
    }

    /// Decoder logits `[b, t, V]` for `decoder_input_ids` given encoder states. With a cache,
    /// only the new positions are passed and their keys and values are appended to it.
    fn decode(
        &self,
        decoder_input_ids: &Tensor,
        encoder: &Tensor,
        encoder_mask: Option<&Tensor>,
        mut cache: Option<&mut KvCache>,
        ctx: &StepContext,
    ) -> Result<Tensor> {
        let start = cache.as_ref().map_or(0, |c| c.len());
        self.check_len(start + decoder_input_ids.dim(1)?)?;
        let mut h = self.embed(decoder_input_ids, &self.dec_pos, start, &self.dec_ln, ctx)?;
        let bias = encoder_mask.map(padding_bias).transpose()?;
        if let Some(c) = cache.as_deref_mut() {
            c.reserve_layers(self.dec_layers.len());
        }
        for (i, l) in self.dec_layers.iter().enumerate() {
            h = match cache.as_deref_mut() {
                Some(c) => {
                    let drops = (&*self.dropout, &*self.act_dropout);
                    l.forward((&h, encoder), bias.as_ref(), drops, Some((c, i)), ctx)?
                }
                None => {
                    let part = Arc::new(WithDropouts {
                        block: l.clone(),
                        dropouts: vec![self.dropout.clone(), self.act_dropout.clone()],
                    });
                    let (ctx, bias) = (*ctx, bias.clone());
                    let run = move |p: &WithDropouts<DecoderLayer>, xs: &[Tensor]| {
                        let drops = (&*p.dropouts[0], &*p.dropouts[1]);
                        p.block
                            .forward((&xs[0], &xs[1]), bias.as_ref(), drops, None, &ctx)
                    };
                    let recompute = ctx.recompute.block(i);
                    let inputs = [h, encoder.clone()];
                    checkpointed(recompute, part, WithDropouts::dropouts, &inputs, run)?
                }
            };
        }
        if let Some(c) = cache {
            c.advance(decoder_input_ids.dim(1)?);
        }
        let logits = Linear::from_weight(self.shared.clone(), None).forward(&h, ctx)?;
        Ok(logits.broadcast_add(&self.final_logits_bias)?)
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
