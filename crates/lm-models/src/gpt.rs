//! GPT (decoder-only), laid out as HuggingFace's `GPT2LMHeadModel`.
//!
//! The chapter's decoder-only model: `p(x_{i+1} | x_{1:i}) = softmax(E φ(x_{1:i})_i)` where
//! `φ` is a stack of causal transformer blocks and the output embedding is the token embedding
//! `E` itself (tied). Top to bottom in the order data flows: embeddings, blocks
//! (pre-LayerNorm, causal self-attention, GELU MLP), final LayerNorm, tied head.
//!
//! Linear layers use GPT-2's `Conv1D` layout: the weight is `[in, out]` and `y = x·W + b`.

use candle_core::{DType, Device, Tensor, D};
use candle_nn::{Init, VarBuilder};
use serde::{Deserialize, Serialize};

use crate::context::{MatmulPrecision, StepContext};
use crate::error::{ModelError, Result};
use crate::layers::{attention, merge_heads, split_heads, KvCache};
use crate::layers::{checkpointed, Dropout};
use crate::params::ParamStore;
use crate::seq2seq::GenerationConfig;
use lm_kernels::ops::{
    add_bias, causal_attention, causal_softmax, layer_norm, linear, linear_gelu, residual_add,
    softmax_last_dim, Gelu,
};
use std::sync::Arc;

/// Parameters with their names.
pub type NamedVars = Vec<(String, candle_core::Var)>;

/// GPT hyperparameters, with HuggingFace `GPT2Config` key names (other keys are kept in `extra`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GptConfig {
    /// Vocabulary size V.
    pub vocab_size: usize,
    /// Longest sequence (learned positions).
    pub n_positions: usize,
    /// Model width d.
    pub n_embd: usize,
    /// Number of blocks.
    pub n_layer: usize,
    /// Attention heads per block; must divide `n_embd`.
    pub n_head: usize,
    /// ε of every LayerNorm.
    #[serde(default = "default_ln_eps")]
    pub layer_norm_epsilon: f64,
    /// Dropout after embeddings, attention probabilities and residual branches.
    #[serde(default)]
    pub dropout: f64,
    /// Standard deviation of the initialization (GPT-2: 0.02).
    #[serde(default = "default_init_range")]
    pub initializer_range: f64,
    /// Keys of a loaded `config.json` that this type does not model (generation settings such
    /// as `forced_eos_token_id`, `task_specific_params`, …), written back unchanged on save.
    #[serde(flatten, default)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

fn default_ln_eps() -> f64 {
    1e-5
}
fn default_init_range() -> f64 {
    0.02
}

impl GptConfig {
    /// A configuration with GPT-2's defaults for everything but the sizes.
    pub fn new(
        vocab_size: usize,
        n_positions: usize,
        n_embd: usize,
        n_layer: usize,
        n_head: usize,
    ) -> Self {
        Self {
            vocab_size,
            n_positions,
            n_embd,
            n_layer,
            n_head,
            layer_norm_epsilon: 1e-5,
            dropout: 0.0,
            initializer_range: 0.02,
            extra: serde_json::Map::new(),
        }
    }

    /// GPT-2 small: 12 layers, 12 heads, d = 768, 50257 tokens, 1024 positions (124 M parameters).
    pub fn gpt2_small() -> Self {
        Self::new(50257, 1024, 768, 12, 12)
    }

    /// A tiny model for tests.
    pub fn tiny(vocab_size: usize) -> Self {
        Self::new(vocab_size, 16, 16, 2, 2)
    }

    /// Checks the sizes agree with each other.
    pub fn validate(&self) -> Result<()> {
        let bad = |key, problem: String| Err(ModelError::BadConfig { key, problem });
        if self.n_head == 0 || !self.n_embd.is_multiple_of(self.n_head) {
            return bad(
                "n_embd",
                format!(
                    "n_embd = {} is not divisible by n_head = {}",
                    self.n_embd, self.n_head
                ),
            );
        }
        if self.vocab_size == 0 || self.n_positions == 0 || self.n_layer == 0 {
            return bad(
                "vocab_size",
                "vocab_size, n_positions and n_layer must be positive".into(),
            );
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return bad("dropout", format!("{} is not in [0, 1)", self.dropout));
        }
        Ok(())
    }

    /// Number of parameters (the tied head counted once).
    pub fn num_params(&self) -> usize {
        let d = self.n_embd;
        let block =
            2 * 2 * d + (d * 3 * d + 3 * d) + (d * d + d) + (d * 4 * d + 4 * d) + (4 * d * d + d);
        self.vocab_size * d + self.n_positions * d + self.n_layer * block + 2 * d
    }

    /// Training FLOPs per token at context length `t` (PaLM appendix B, as nanoGPT's MFU):
    /// `6·N + 12·L·d·t`, N without position embeddings.
    pub fn flops_per_token(&self, t: usize) -> f64 {
        let n = (self.num_params() - self.n_positions * self.n_embd) as f64;
        6.0 * n + 12.0 * (self.n_layer * self.n_embd * t) as f64
    }
}

/// A GPT-2 `Conv1D`: `y = x·W + b` with `W: [in, out]`.
#[derive(Debug, Clone)]
struct Conv1D {
    weight: Tensor,
    bias: Tensor,
}

impl Conv1D {
    fn new(n_in: usize, n_out: usize, std: f64, vb: VarBuilder) -> candle_core::Result<Self> {
        let weight = vb.get_with_hints(
            (n_in, n_out),
            "weight",
            Init::Randn {
                mean: 0.0,
                stdev: std,
            },
        )?;
        let bias = vb.get_with_hints(n_out, "bias", Init::Const(0.0))?;
        Ok(Self { weight, bias })
    }

    fn forward(&self, x: &Tensor, ctx: &StepContext) -> candle_core::Result<Tensor> {
        linear(x, &self.weight, Some(&self.bias), false, ctx.precision)
    }

    /// `gelu(forward(x))` (GPT-2's tanh form), the bias and GELU in one kernel on a GPU.
    fn forward_gelu(&self, x: &Tensor, ctx: &StepContext) -> candle_core::Result<Tensor> {
        let p = (&self.weight, Some(&self.bias));
        linear_gelu(x, p, false, Gelu::Tanh, ctx.precision)
    }
}

#[derive(Debug, Clone)]
struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    eps: f64,
}

impl LayerNorm {
    fn new(d: usize, eps: f64, vb: VarBuilder) -> candle_core::Result<Self> {
        Ok(Self {
            weight: vb.get_with_hints(d, "weight", Init::Const(1.0))?,
            bias: vb.get_with_hints(d, "bias", Init::Const(0.0))?,
            eps,
        })
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        layer_norm(x, &self.weight, Some(&self.bias), self.eps)
    }
}

/// Which keys each query sees: the causal rule, and an additive bias on top (or instead).
#[derive(Debug, Clone, Copy)]
struct Mask<'a> {
    /// A bias broadcast over the scores (0 where seen, a very negative number elsewhere).
    bias: Option<&'a Tensor>,
    /// Query `i` sees keys `≤ i` (besides the bias).
    causal: bool,
}

impl Mask<'_> {
    /// Plain causal attention.
    const CAUSAL: Self = Self {
        bias: None,
        causal: true,
    };

    /// Whether this is [`Mask::CAUSAL`] (which the fused attention kernel runs).
    fn is_plain_causal(&self) -> bool {
        self.bias.is_none() && self.causal
    }
}

/// A prefix LM's attention bias `[b, 1, t, t]`: query `i` of row `r` sees key `j` when `j ≤ i`
/// or `j < prefix_len[r]` — the prefix attends to itself in both directions, the continuation
/// causally (UniLM's and T5's "prefix LM" on a decoder-only model). Built on the device of
/// `prefix_len` (`[b]`, u32), with no transfer to the host.
pub fn prefix_lm_bias(prefix_len: &Tensor, t: usize) -> Result<Tensor> {
    let dev = prefix_len.device();
    let b = prefix_len.dim(0)?;
    let keys = Tensor::arange(0u32, t as u32, dev)?;
    let causal = keys
        .reshape((1, 1, 1, t))?
        .broadcast_le(&keys.reshape((1, 1, t, 1))?)?;
    let in_prefix = keys
        .reshape((1, 1, 1, t))?
        .broadcast_lt(&prefix_len.to_dtype(DType::U32)?.reshape((b, 1, 1, 1))?)?;
    let seen = causal.broadcast_maximum(&in_prefix)?.to_dtype(DType::F32)?;
    Ok((seen.affine(-1.0, 1.0)? * f32::MIN as f64)?)
}

/// Multi-head causal self-attention:
/// `softmax(QKᵀ/√d_head + M) V` per head, heads concatenated and projected.
#[derive(Debug)]
struct CausalSelfAttention {
    c_attn: Conv1D,
    c_proj: Conv1D,
    n_head: usize,
    attn_dropout: Dropout,
    resid_dropout: Dropout,
}

impl CausalSelfAttention {
    fn new(cfg: &GptConfig, layer: usize, vb: VarBuilder) -> candle_core::Result<Self> {
        let d = cfg.n_embd;
        let std = cfg.initializer_range;
        // GPT-2: residual output projections get std / √(2·n_layer).
        let proj_std = std / ((2 * cfg.n_layer) as f64).sqrt();
        Ok(Self {
            c_attn: Conv1D::new(d, 3 * d, std, vb.pp("c_attn"))?,
            c_proj: Conv1D::new(d, d, proj_std, vb.pp("c_proj"))?,
            n_head: cfg.n_head,
            attn_dropout: Dropout::new(cfg.dropout, 0xA77E_0000 + layer as u64),
            resid_dropout: Dropout::new(cfg.dropout, 0x2E51_0000 + layer as u64),
        })
    }

    /// `mask.bias` (0 or a very negative number) hides keys: `[b, 1, 1, keys]` the padding
    /// keys of left-padded batched generation, `[b, 1, t, t]` a prefix LM's mask (then
    /// `mask.causal` is off: the bias says everything).
    fn forward(
        &self,
        x: &Tensor,
        ctx: &StepContext,
        cache: Option<(&mut KvCache, usize)>,
        mask: Mask<'_>,
    ) -> candle_core::Result<Tensor> {
        let (b, t, d) = x.dims3()?;
        let qkv = self.c_attn.forward(x, ctx)?;
        let scale = 1.0 / ((d / self.n_head) as f64).sqrt();
        let drop_probs = ctx.training() && self.attn_dropout.rate() > 0.0;
        if cache.is_none() && mask.is_plain_causal() && !drop_probs {
            let y = causal_attention(&qkv, self.n_head, scale, ctx.precision)?;
            return self
                .resid_dropout
                .forward(&self.c_proj.forward(&y, ctx)?, ctx);
        }
        let heads = |i: usize| split_heads(&qkv.narrow(D::Minus1, i * d, d)?, self.n_head);
        let (q, k, v) = (heads(0)?, heads(1)?, heads(2)?);
        let (k, v) = match cache {
            Some((c, layer)) => c.append(layer, k, v)?,
            None => (k, v),
        };
        let y = if drop_probs {
            let scores = lm_kernels::ops::matmul(&q, &k.t()?, ctx.precision)?;
            let probs = match mask.bias {
                None => causal_softmax(&scores, scale)?,
                Some(bias) => {
                    let s = (scores * scale)?.broadcast_add(bias)?;
                    if mask.causal {
                        causal_softmax(&s, 1.0)?
                    } else {
                        softmax_last_dim(&s)?
                    }
                }
            };
            let probs = self.attn_dropout.forward(&probs, ctx)?;
            lm_kernels::ops::matmul(&probs, &v, ctx.precision)?
        } else {
            attention((&q, &k, &v), mask.bias, scale, mask.causal, ctx)?
        };
        let y = merge_heads(&y)?.reshape((b, t, d))?;
        self.resid_dropout
            .forward(&self.c_proj.forward(&y, ctx)?, ctx)
    }
}

/// The position-wise MLP: `c_proj(GELU(c_fc(x)))`, width 4d, GPT-2's tanh GELU.
#[derive(Debug)]
struct Mlp {
    c_fc: Conv1D,
    c_proj: Conv1D,
    dropout: Dropout,
}

impl Mlp {
    fn new(cfg: &GptConfig, layer: usize, vb: VarBuilder) -> candle_core::Result<Self> {
        let d = cfg.n_embd;
        let proj_std = cfg.initializer_range / ((2 * cfg.n_layer) as f64).sqrt();
        Ok(Self {
            c_fc: Conv1D::new(d, 4 * d, cfg.initializer_range, vb.pp("c_fc"))?,
            c_proj: Conv1D::new(4 * d, d, proj_std, vb.pp("c_proj"))?,
            dropout: Dropout::new(cfg.dropout, 0x3171_0000 + layer as u64),
        })
    }

    fn forward(&self, x: &Tensor, ctx: &StepContext) -> candle_core::Result<Tensor> {
        let h = self.c_fc.forward_gelu(x, ctx)?;
        self.dropout.forward(&self.c_proj.forward(&h, ctx)?, ctx)
    }
}

/// A pre-LayerNorm block: `x + attn(ln_1(x))`, then `x + mlp(ln_2(x))`.
#[derive(Debug)]
struct Block {
    ln_1: LayerNorm,
    attn: CausalSelfAttention,
    ln_2: LayerNorm,
    mlp: Mlp,
}

impl Block {
    fn new(cfg: &GptConfig, layer: usize, vb: VarBuilder) -> candle_core::Result<Self> {
        Ok(Self {
            ln_1: LayerNorm::new(cfg.n_embd, cfg.layer_norm_epsilon, vb.pp("ln_1"))?,
            attn: CausalSelfAttention::new(cfg, layer, vb.pp("attn"))?,
            ln_2: LayerNorm::new(cfg.n_embd, cfg.layer_norm_epsilon, vb.pp("ln_2"))?,
            mlp: Mlp::new(cfg, layer, vb.pp("mlp"))?,
        })
    }

    /// The dropouts a forward draws from, for a recomputation to replay.
    fn dropouts(&self) -> Vec<&Dropout> {
        vec![
            &self.attn.attn_dropout,
            &self.attn.resid_dropout,
            &self.mlp.dropout,
        ]
    }

    fn forward(
        &self,
        x: &Tensor,
        ctx: &StepContext,
        cache: Option<(&mut KvCache, usize)>,
        mask: Mask<'_>,
    ) -> candle_core::Result<Tensor> {
        let attn = self
            .attn
            .forward(&self.ln_1.forward(x)?, ctx, cache, mask)?;
        let x = residual_add(x, &attn)?;
        residual_add(&x, &self.mlp.forward(&self.ln_2.forward(&x)?, ctx)?)
    }
}

/// GPT with a tied language-modeling head.
#[derive(Debug)]
pub struct Gpt {
    cfg: GptConfig,
    wte: Tensor,
    wpe: Tensor,
    blocks: Vec<Arc<Block>>,
    ln_f: LayerNorm,
    embd_dropout: Dropout,
}

impl Gpt {
    /// Builds the model from `vb` (HF names under `transformer.`), creating missing parameters
    /// with GPT-2's initialization: `N(0, 0.02)` weights, zero biases, unit LayerNorm gains, and
    /// residual output projections at `0.02/√(2·n_layer)`.
    pub fn new(cfg: &GptConfig, vb: VarBuilder) -> Result<Self> {
        cfg.validate()?;
        let vb = vb.pp("transformer");
        let std = cfg.initializer_range;
        let wte = vb.pp("wte").get_with_hints(
            (cfg.vocab_size, cfg.n_embd),
            "weight",
            Init::Randn {
                mean: 0.0,
                stdev: std,
            },
        )?;
        let wpe = vb.pp("wpe").get_with_hints(
            (cfg.n_positions, cfg.n_embd),
            "weight",
            Init::Randn {
                mean: 0.0,
                stdev: std,
            },
        )?;
        let blocks = (0..cfg.n_layer)
            .map(|i| Block::new(cfg, i, vb.pp("h").pp(i)).map(Arc::new))
            .collect::<candle_core::Result<Vec<_>>>()?;
        let ln_f = LayerNorm::new(cfg.n_embd, cfg.layer_norm_epsilon, vb.pp("ln_f"))?;
        Ok(Self {
            cfg: cfg.clone(),
            wte,
            wpe,
            blocks,
            ln_f,
            embd_dropout: Dropout::new(cfg.dropout, 0xE3BD_0000),
        })
    }

    /// A freshly initialized model and its parameters, keyed by `seed`.
    pub fn init(cfg: &GptConfig, seed: u64, device: &Device) -> Result<(Self, ParamStore)> {
        let store = ParamStore::new(seed);
        let model = Self::new(cfg, store.var_builder(DType::F32, device))?;
        Ok((model, store))
    }

    /// Loads a HuggingFace `GPT2LMHeadModel` directory.
    pub fn from_hf_dir(dir: &std::path::Path, device: &Device) -> Result<(Self, ParamStore)> {
        let cfg: GptConfig = crate::hf::read_config(dir, &["gpt2"])?;
        let store = crate::hf::store_for(dir, 0)?;
        let model = Self::new(&cfg, store.var_builder(DType::F32, device))?;
        // `GPT2Model` checkpoints name the body without the `transformer.` prefix.
        store.load_safetensors_layout(&dir.join("model.safetensors"), "transformer.", |_| false)?;
        Ok((model, store))
    }

    /// Writes a HuggingFace directory (`config.json`, `model.safetensors`) that transformers'
    /// `from_pretrained` loads.
    pub fn save_hf_dir(&self, store: &ParamStore, dir: &std::path::Path) -> Result<()> {
        crate::hf::save_dir(store, &self.cfg.to_hf_json(), dir)
    }

    /// The configuration.
    pub fn config(&self) -> &GptConfig {
        &self.cfg
    }

    /// Logits `[b, t, V]` for token ids `[b, t]` (`u32`).
    pub fn forward(&self, idx: &Tensor, ctx: &StepContext) -> Result<Tensor> {
        self.forward_cached(idx, None, ctx)
    }

    /// Logits for the new tokens `idx` following the positions already in `cache` (whose keys and
    /// values are extended); without a cache, a full pass.
    pub fn forward_cached(
        &self,
        idx: &Tensor,
        cache: Option<&mut KvCache>,
        ctx: &StepContext,
    ) -> Result<Tensor> {
        self.forward_masked(idx, (None, Mask::CAUSAL), cache, ctx)
    }

    /// Logits `[b, t, V]` of a decoder-only prefix LM: row `r`'s first `prefix_len[r]` tokens
    /// (`[b]`, u32) attend to each other in both directions, the rest causally
    /// ([`prefix_lm_bias`]).
    pub fn forward_prefix_lm(
        &self,
        idx: &Tensor,
        prefix_len: &Tensor,
        ctx: &StepContext,
    ) -> Result<Tensor> {
        let bias = prefix_lm_bias(prefix_len, idx.dim(1)?)?;
        let mask = Mask {
            bias: Some(&bias),
            causal: false,
        };
        self.forward_masked(idx, (None, mask), None, ctx)
    }

    /// [`Gpt::forward_cached`] with `positions` `[b, t]` (u32; left-padded generation counts
    /// them from each row's first real token, else `past..past + t`) and the attention `mask`.
    /// The final hidden states `[b·t, n_embd]` of tokens `idx` (positions and attention as
    /// `how` says), extending `cache` when given.
    fn hidden_masked(
        &self,
        idx: &Tensor,
        (positions, mask): (Option<&Tensor>, Mask<'_>),
        mut cache: Option<&mut KvCache>,
        ctx: &StepContext,
    ) -> Result<Tensor> {
        let (b, t) = idx.dims2()?;
        let past = cache.as_ref().map_or(0, |c| c.len());
        if past + t > self.cfg.n_positions {
            return Err(ModelError::BadConfig {
                key: "n_positions",
                problem: format!(
                    "sequence of {t} tokens is longer than n_positions = {}",
                    self.cfg.n_positions
                ),
            });
        }
        let tok = self
            .wte
            .embedding(&idx.flatten_all()?)?
            .reshape((b, t, self.cfg.n_embd))?;
        let x = match positions {
            None => add_bias(&tok, &self.wpe.narrow(0, past, t)?)?,
            Some(positions) => {
                let pos = self.wpe.embedding(&positions.flatten_all()?)?.reshape((
                    b,
                    t,
                    self.cfg.n_embd,
                ))?;
                (tok + pos)?
            }
        };
        let mut x = self.embd_dropout.forward(&x, ctx)?;
        for (i, block) in self.blocks.iter().enumerate() {
            x = match cache.as_deref_mut() {
                Some(c) => block.forward(&x, ctx, Some((c, i)), mask)?,
                None => {
                    let (ctx, bias, causal) = (*ctx, mask.bias.cloned(), mask.causal);
                    let run = move |b: &Block, xs: &[Tensor]| {
                        let mask = Mask {
                            bias: bias.as_ref(),
                            causal,
                        };
                        b.forward(&xs[0], &ctx, None, mask)
                    };
                    let recompute = ctx.recompute.block(i);
                    checkpointed(recompute, block.clone(), Block::dropouts, &[x], run)?
                }
            };
        }
        if let Some(c) = cache {
            c.advance(t);
        }
        let x = self.ln_f.forward(&x)?;
        // Tied head: logits = x · Eᵀ (E stored [vocab, n_embd], as nn.Linear's weight).
        Ok(x)
    }

    /// Logits `[b, t, V]` of the final hidden states `x` (`[b·t, n_embd]`, from
    /// [`Gpt::hidden_masked`]).
    fn head(&self, x: &Tensor, (b, t): (usize, usize), ctx: &StepContext) -> Result<Tensor> {
        let logits = linear(x, &self.wte, None, true, ctx.precision)?;
        Ok(logits.reshape((b, t, self.cfg.vocab_size))?)
    }

    /// [`Gpt::hidden_masked`] then [`Gpt::head`].
    fn forward_masked(
        &self,
        idx: &Tensor,
        how: (Option<&Tensor>, Mask<'_>),
        cache: Option<&mut KvCache>,
        ctx: &StepContext,
    ) -> Result<Tensor> {
        let x = self.hidden_masked(idx, how, cache, ctx)?;
        self.head(&x, idx.dims2()?, ctx)
    }

    /// The final hidden states `[b, t, n_embd]` (after the last layer norm) of a training or
    /// evaluation pass — causal, or a prefix LM with `prefix_len` — for a loss that applies the
    /// head itself ([`Gpt::head_weight`]; e.g. in chunks of the vocabulary).
    pub fn hidden_states(
        &self,
        idx: &Tensor,
        prefix_len: Option<&Tensor>,
        ctx: &StepContext,
    ) -> Result<Tensor> {
        let (b, t) = idx.dims2()?;
        let x = match prefix_len {
            None => self.hidden_masked(idx, (None, Mask::CAUSAL), None, ctx)?,
            Some(p) => {
                let bias = prefix_lm_bias(p, t)?;
                let mask = Mask {
                    bias: Some(&bias),
                    causal: false,
                };
                self.hidden_masked(idx, (None, mask), None, ctx)?
            }
        };
        Ok(x.reshape((b, t, self.cfg.n_embd))?)
    }

    /// The head's weight `[vocab, n_embd]`: the token embedding, tied.
    pub fn head_weight(&self) -> &Tensor {
        &self.wte
    }

    /// Greedy or sampled continuation of several prompts at once, left-padded with `pad` as
    /// transformers does for decoder-only models: padding keys hidden, positions counted from
    /// each prompt's first real token. Returns each row's `max_new_tokens` new tokens (cut after
    /// `eos` when given). Products at `precision`, no dropout.
    pub fn generate_batch(
        &self,
        prompts: &[Vec<u32>],
        max_new_tokens: usize,
        (sampling, rng): (&crate::Sampling, &mut lm_objectives::Rng),
        (pad, eos): (u32, Option<u32>),
        precision: MatmulPrecision,
    ) -> Result<Vec<Vec<u32>>> {
        let longest = prompts.iter().map(Vec::len).max().unwrap_or(0);
        if longest == 0 || prompts.iter().any(Vec::is_empty) {
            return Err(ModelError::BadConfig {
                key: "prompt",
                problem: "generation needs at least one prompt token per row".into(),
            });
        }
        let ctx = &StepContext::eval(precision);
        let device = self.wte.device().clone();
        let rows = prompts.len();
        // Attention mask and next position of every row.
        let mut mask: Vec<Vec<f32>> = prompts
            .iter()
            .map(|p| {
                (0..longest)
                    .map(|i| f32::from(u8::from(i >= longest - p.len())))
                    .collect()
            })
            .collect();
        let mut next_pos: Vec<u32> = prompts.iter().map(|p| p.len() as u32).collect();
        let mut feed: Vec<Vec<u32>> = prompts
            .iter()
            .map(|p| {
                std::iter::repeat_n(pad, longest - p.len())
                    .chain(p.iter().copied())
                    .collect()
            })
            .collect();
        let mut positions: Vec<Vec<u32>> = prompts
            .iter()
            .map(|p| {
                (0..longest)
                    .map(|i| (i + p.len()).saturating_sub(longest) as u32)
                    .collect()
            })
            .collect();
        let mut out: Vec<Vec<u32>> = vec![vec![]; rows];
        // Each row as transformers' processors see it (left padding, prompt, new tokens).
        let mut history = feed.clone();
        let gens: Vec<GenerationConfig> = (prompts.iter())
            .map(|p| self.generation_config(max_new_tokens, p.len()))
            .collect();
        let mut cache = KvCache::new();
        let result = (|| -> Result<()> {
            for step in 0..max_new_tokens {
                let t = feed[0].len();
                let ids = Tensor::new(feed.concat(), &device)?.reshape((rows, t))?;
                let pos = Tensor::new(positions.concat(), &device)?.reshape((rows, t))?;
                let keys = mask[0].len();
                let m = Tensor::new(mask.concat(), &device)?.reshape((rows, keys))?;
                let bias = crate::layers::padding_bias(&m)?;
                let attend = Mask {
                    bias: Some(&bias),
                    causal: true,
                };
                let logits =
                    self.forward_masked(&ids, (Some(&pos), attend), Some(&mut cache), ctx)?;
                for r in 0..rows {
                    let mut last: Vec<f32> =
                        logits.get(r)?.get(t - 1)?.to_dtype(DType::F32)?.to_vec1()?;
                    gens[r].process(&mut last, &history[r], step);
                    let next = sampling.sample(&last, rng);
                    out[r].push(next);
                    history[r].push(next);
                    feed[r] = vec![next];
                    positions[r] = vec![next_pos[r]];
                    next_pos[r] += 1;
                    mask[r].push(1.0);
                }
            }
            Ok(())
        })();
        result?;
        if let Some(e) = eos {
            for row in &mut out {
                if let Some(i) = row.iter().position(|&x| x == e) {
                    row.truncate(i + 1);
                }
            }
        }
        Ok(out)
    }

    /// Splits `store`'s parameters into nanoGPT's optimizer groups: 2-D tensors (matrices and
    /// embeddings) decay, vectors (biases, LayerNorm gains) do not.
    pub fn decay_groups(store: &ParamStore) -> (NamedVars, NamedVars) {
        lm_optim::split_by_decay(store.vars())
    }

    /// Continues `prompt` by `max_new_tokens` tokens sampled with `sampling`. With `use_cache`,
    /// each step feeds only the newest token and reuses the keys and values of the others (the
    /// context is limited to `n_positions`); without, every step reruns the last `n_positions`
    /// tokens. Within `n_positions` both give the same tokens. Products at `precision`, no
    /// dropout.
    pub fn generate_with(
        &self,
        prompt: &[u32],
        max_new_tokens: usize,
        (sampling, rng): (&crate::Sampling, &mut lm_objectives::Rng),
        use_cache: bool,
        precision: MatmulPrecision,
    ) -> Result<Vec<u32>> {
        if prompt.is_empty() {
            return Err(ModelError::BadConfig {
                key: "prompt",
                problem: "generation needs at least one prompt token".into(),
            });
        }
        let ctx = &StepContext::eval(precision);
        let device = self.wte.device().clone();
        let gen = self.generation_config(max_new_tokens, prompt.len());
        let mut tokens = prompt.to_vec();
        let mut cache = KvCache::new();
        let mut fed = 0;
        for step in 0..max_new_tokens {
            let logits = if use_cache && tokens.len() <= self.cfg.n_positions {
                let ids = Tensor::new(&tokens[fed..], &device)?.unsqueeze(0)?;
                fed = tokens.len();
                self.forward_cached(&ids, Some(&mut cache), ctx)?
            } else {
                let start = tokens.len().saturating_sub(self.cfg.n_positions);
                self.forward(&Tensor::new(&tokens[start..], &device)?.unsqueeze(0)?, ctx)?
            };
            let t = logits.dim(1)?;
            let mut last: Vec<f32> = logits
                .squeeze(0)?
                .get(t - 1)?
                .to_dtype(DType::F32)?
                .to_vec1()?;
            gen.process(&mut last, &tokens, step);
            tokens.push(sampling.sample(&last, rng));
        }
        Ok(tokens)
    }

    /// The config's logits processors as transformers applies them to a decoder-only model (over
    /// the prompt and what follows; `forced_bos_token_id` only for a one-token prompt;
    /// `min_length`, which counts the prompt, not read).
    pub fn generation_config(&self, max_new_tokens: usize, prompt_len: usize) -> GenerationConfig {
        let mut extra = self.cfg.extra.clone();
        extra.remove("min_length");
        let eos = extra.get("eos_token_id").and_then(|v| v.as_u64());
        let eos = eos.map_or(u32::MAX, |v| v as u32);
        let mut gen = GenerationConfig::from_model_config(max_new_tokens, 0, eos, 0, &extra);
        if prompt_len != 1 {
            gen.forced_bos_token_id = None;
        }
        gen
    }

    /// [`Gpt::generate_with`] using the key/value cache.
    pub fn generate(
        &self,
        prompt: &[u32],
        max_new_tokens: usize,
        (sampling, rng): (&crate::Sampling, &mut lm_objectives::Rng),
        precision: MatmulPrecision,
    ) -> Result<Vec<u32>> {
        self.generate_with(prompt, max_new_tokens, (sampling, rng), true, precision)
    }
}

impl GptConfig {
    /// The configuration as HuggingFace's `config.json` for `GPT2LMHeadModel`.
    pub fn to_hf_json(&self) -> serde_json::Value {
        // The loaded config's other keys first; the modelled ones on top.
        let mut v = serde_json::Value::Object(self.extra.clone());
        let ours = serde_json::json!({
            "architectures": ["GPT2LMHeadModel"],
            "model_type": "gpt2",
            "vocab_size": self.vocab_size,
            "n_positions": self.n_positions,
            "n_ctx": self.n_positions,
            "n_embd": self.n_embd,
            "n_layer": self.n_layer,
            "n_head": self.n_head,
            "n_inner": null,
            "activation_function": "gelu_new",
            "resid_pdrop": self.dropout,
            "embd_pdrop": self.dropout,
            "attn_pdrop": self.dropout,
            "layer_norm_epsilon": self.layer_norm_epsilon,
            "initializer_range": self.initializer_range,
            "tie_word_embeddings": true,
        });
        if let (Some(all), serde_json::Value::Object(ours)) = (v.as_object_mut(), ours) {
            all.extend(ours);
        }
        v
    }
}
