//! The layers the HuggingFace encoders and encoder-decoders share, in their parameter layouts:
//! `nn.Linear` (`weight: [out, in]`), `nn.LayerNorm`, `nn.Embedding`, and multi-head attention
//! over `[batch, heads, time, head_dim]` tensors.

use candle_core::{Result, Tensor, D};
use candle_nn::{Init, VarBuilder};

use crate::context::StepContext;
use lm_kernels::ops::{causal_softmax, layer_norm, linear, linear_gelu, softmax_last_dim, Gelu};
pub use lm_kernels::ops::{merge_heads, split_heads};
use lm_objectives::Rng;
use rayon::prelude::*;
use std::sync::{Arc, Mutex};

/// `y = x Wᵀ (+ b)` with `W: [out, in]` (PyTorch `nn.Linear`).
#[derive(Debug, Clone)]
pub struct Linear {
    weight: Tensor,
    bias: Option<Tensor>,
}

impl Linear {
    /// A linear layer at `vb` with weights `N(0, std²)` and zero bias when `bias`.
    pub fn new(n_in: usize, n_out: usize, bias: bool, std: f64, vb: VarBuilder) -> Result<Self> {
        let weight = vb.get_with_hints(
            (n_out, n_in),
            "weight",
            Init::Randn {
                mean: 0.0,
                stdev: std,
            },
        )?;
        let bias = if bias {
            Some(vb.get_with_hints(n_out, "bias", Init::Const(0.0))?)
        } else {
            None
        };
        Ok(Self { weight, bias })
    }

    /// A linear layer over an existing weight (a tied head).
    pub fn from_weight(weight: Tensor, bias: Option<Tensor>) -> Self {
        Self { weight, bias }
    }

    /// The weight `[out, in]`.
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    /// Applies the layer to `[.., in]`.
    pub fn forward(&self, x: &Tensor, ctx: &StepContext) -> Result<Tensor> {
        linear(x, &self.weight, self.bias.as_ref(), true, ctx.precision)
    }

    /// `gelu(forward(x))`, with the bias and GELU in one kernel on a GPU.
    pub fn forward_gelu(&self, x: &Tensor, kind: Gelu, ctx: &StepContext) -> Result<Tensor> {
        let p = (&self.weight, self.bias.as_ref());
        linear_gelu(x, p, true, kind, ctx.precision)
    }

    /// The outputs of `parts` (layers over the same input) side by side, `[.., Σ out]`, as one
    /// product with their weights (and biases) concatenated — BERT's query, key and value as
    /// the packed projection the fused attention reads.
    pub fn forward_packed(parts: &[&Linear], x: &Tensor, ctx: &StepContext) -> Result<Tensor> {
        let weights: Vec<&Tensor> = parts.iter().map(|l| &l.weight).collect();
        let biases: Option<Vec<&Tensor>> = parts.iter().map(|l| l.bias.as_ref()).collect();
        let bias = match biases {
            Some(b) => Some(Tensor::cat(&b, 0)?),
            None if parts.iter().all(|l| l.bias.is_none()) => None,
            None => candle_core::bail!("forward_packed: some layers have a bias and some not"),
        };
        linear(
            x,
            &Tensor::cat(&weights, 0)?,
            bias.as_ref(),
            true,
            ctx.precision,
        )
    }
}

/// `nn.LayerNorm` with gain and bias.
#[derive(Debug, Clone)]
pub struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    eps: f64,
}

impl LayerNorm {
    /// A layer norm at `vb` (gain 1, bias 0).
    pub fn new(d: usize, eps: f64, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            weight: vb.get_with_hints(d, "weight", Init::Const(1.0))?,
            bias: vb.get_with_hints(d, "bias", Init::Const(0.0))?,
            eps,
        })
    }

    /// Normalizes the last dimension.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        layer_norm(x, &self.weight, Some(&self.bias), self.eps)
    }
}

/// An embedding table `[n, d]` at `vb`/`weight`, drawn from `N(0, std²)`.
pub fn embedding(n: usize, d: usize, std: f64, vb: VarBuilder) -> Result<Tensor> {
    vb.get_with_hints(
        (n, d),
        "weight",
        Init::Randn {
            mean: 0.0,
            stdev: std,
        },
    )
}

/// Looks up rows of `table` for ids of any shape: `[..] → [.., d]`.
pub fn lookup(table: &Tensor, ids: &Tensor) -> Result<Tensor> {
    let mut dims = ids.dims().to_vec();
    dims.push(table.dim(1)?);
    table.embedding(&ids.flatten_all()?)?.reshape(dims)
}

/// `softmax(scale·QKᵀ + bias (+ causal mask)) V` for `q: [b, h, tq, d]`, `k, v: [b, h, tk, d]`.
/// `bias` is added to the scaled scores and broadcast (padding masks `[b, 1, 1, tk]`, T5's
/// relative position bias `[1, h, tq, tk]`). With `causal`, query `i` sees keys `≤ i + tk − tq`.
pub fn attention(
    (q, k, v): (&Tensor, &Tensor, &Tensor),
    bias: Option<&Tensor>,
    scale: f64,
    causal: bool,
    ctx: &StepContext,
) -> Result<Tensor> {
    let scores = lm_kernels::ops::matmul(q, &k.transpose(D::Minus2, D::Minus1)?, ctx.precision)?;
    let probs = match (bias, causal) {
        (None, true) => causal_softmax(&scores, scale)?,
        (None, false) => softmax_last_dim(&(scores * scale)?)?,
        (Some(b), causal) => {
            let s = (scores * scale)?.broadcast_add(&b.to_dtype(q.dtype())?)?;
            if causal {
                causal_softmax(&s, 1.0)?
            } else {
                softmax_last_dim(&s)?
            }
        }
    };
    lm_kernels::ops::matmul(&probs, v, ctx.precision)
}

/// The additive padding mask `[b, 1, 1, t]` for an attention mask `[b, t]` of 1 (attend) and 0
/// (padding): 0 where attended, the most negative f32 elsewhere (HuggingFace's convention).
pub fn padding_bias(mask: &Tensor) -> Result<Tensor> {
    let (b, t) = mask.dims2()?;
    let m = mask.to_dtype(candle_core::DType::F32)?;
    ((m.affine(-1.0, 1.0)?) * f32::MIN as f64)?.reshape((b, 1, 1, t))
}

/// Keys and values of past positions, per layer, for incremental decoding; for encoder-decoder
/// models also the cross-attention keys and values of the encoder output, computed once.
#[derive(Debug, Default, Clone)]
pub struct KvCache {
    self_kv: Vec<Option<(Tensor, Tensor)>>,
    cross_kv: Vec<Option<(Tensor, Tensor)>>,
    len: usize,
}

impl KvCache {
    /// An empty cache.
    pub fn new() -> Self {
        Self::default()
    }

    /// Positions already processed.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing was processed yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub(crate) fn reserve_layers(&mut self, n: usize) {
        if self.self_kv.len() < n {
            self.self_kv.resize(n, None);
            self.cross_kv.resize(n, None);
        }
    }

    /// Appends the new keys and values `[b, h, t, d]` of `layer` and returns all of them.
    pub(crate) fn append(
        &mut self,
        layer: usize,
        k: Tensor,
        v: Tensor,
    ) -> Result<(Tensor, Tensor)> {
        self.reserve_layers(layer + 1);
        let kv = match self.self_kv[layer].take() {
            Some((pk, pv)) => (Tensor::cat(&[&pk, &k], 2)?, Tensor::cat(&[&pv, &v], 2)?),
            None => (k, v),
        };
        self.self_kv[layer] = Some(kv.clone());
        Ok(kv)
    }

    /// The cross-attention keys and values of `layer`, computed by `make` on first use.
    pub(crate) fn cross(
        &mut self,
        layer: usize,
        make: impl FnOnce() -> Result<(Tensor, Tensor)>,
    ) -> Result<(Tensor, Tensor)> {
        self.reserve_layers(layer + 1);
        if let Some(kv) = &self.cross_kv[layer] {
            return Ok(kv.clone());
        }
        let kv = make()?;
        self.cross_kv[layer] = Some(kv.clone());
        Ok(kv)
    }

    pub(crate) fn advance(&mut self, t: usize) {
        self.len += t;
    }
}

/// A [`Dropout`]'s generators at one moment ([`Dropout::snapshot`]).
#[derive(Debug, Clone)]
pub struct DropoutState(((u64, usize), Vec<Rng>));

/// A block with the dropout modules its model shares among all blocks (as fairseq's BART and
/// T5 apply one `dropout` everywhere): the part a recomputation owns.
#[derive(Debug)]
pub(crate) struct WithDropouts<B> {
    /// The block.
    pub block: Arc<B>,
    /// The shared dropouts, in the order the block's forward takes them.
    pub dropouts: Vec<Arc<Dropout>>,
}

impl<B> WithDropouts<B> {
    /// The shared dropouts, for [`checkpointed`] to replay.
    pub fn dropouts(&self) -> Vec<&Dropout> {
        self.dropouts.iter().map(|d| &**d).collect()
    }
}

/// `f(part, inputs)` for block `part` of a model, its activations recomputed in the backward
/// pass when `recompute` (the context's choice for this block) says so: the dropouts
/// `dropouts(part)` names are replayed from where they stood, so the recomputation draws the
/// forward pass's masks. `f` and `part` are owned (the graph keeps them until backward).
pub(crate) fn checkpointed<P: Send + Sync + 'static>(
    recompute: bool,
    part: Arc<P>,
    dropouts: fn(&P) -> Vec<&Dropout>,
    inputs: &[Tensor],
    f: impl Fn(&P, &[Tensor]) -> Result<Tensor> + Send + Sync + 'static,
) -> Result<Tensor> {
    if !recompute {
        return f(&part, inputs);
    }
    let states: Vec<DropoutState> = dropouts(&part).iter().map(|d| d.snapshot()).collect();
    // Its number for a gate (ZeRO-3), in the forward pass and in the recomputation alike.
    let seq = crate::gate::next_block();
    let run = move |xs: &[Tensor]| {
        crate::gate::run_gated(seq, &mut || {
            for (d, s) in dropouts(&part).iter().zip(&states) {
                d.replay(s);
            }
            f(&part, xs)
        })
    };
    Tensor::checkpoint(inputs, Arc::new(run))
}

/// Inverted dropout with seeded generators: each element is zeroed with probability `p` and the
/// survivors scaled by `1/(1−p)`, so the expectation is unchanged.
///
/// The mask of row `i` of the input (the first axis, the batch) comes from a generator seeded by
/// (the layer's own seed, the context's [`crate::DropoutKey`] `key`, `first_row + i`), and each
/// call of the same dropout on the same key continues those generators. A trainer that keys each
/// micro-batch makes dropout a pure function of the batch, so a resumed run draws the same masks
/// as an uninterrupted one — and a data-parallel rank holding rows `first_row..` of a batch draws
/// the masks one process holding all of it would.
#[derive(Debug)]
pub struct Dropout {
    p: f64,
    seed: u64,
    /// The (key, first row) the generators were started for, and one generator per row drawn.
    rows: Mutex<((u64, usize), Vec<Rng>)>,
}

impl Dropout {
    /// Dropout with rate `p` whose masks come from `seed` and the context's dropout key.
    pub fn new(p: f64, seed: u64) -> Self {
        Self {
            p,
            seed,
            rows: Mutex::new(((0, 0), vec![])),
        }
    }

    fn generator(seed: u64, key: u64, row: usize) -> Rng {
        let k = key.wrapping_mul(0x9E37_79B9_7F4A_7C15).rotate_left(17);
        let r = (row as u64)
            .wrapping_mul(0xD1B5_4A32_D192_ED03)
            .rotate_left(29);
        Rng::seed_from_u64(seed ^ k ^ r)
    }

    /// The dropout rate.
    pub fn rate(&self) -> f64 {
        self.p
    }

    /// Where the generators stand: [`Dropout::replay`] with it draws the same masks again.
    pub fn snapshot(&self) -> DropoutState {
        DropoutState(self.rows.lock().unwrap_or_else(|e| e.into_inner()).clone())
    }

    /// Puts the generators back where `state` found them.
    pub fn replay(&self, state: &DropoutState) {
        *self.rows.lock().unwrap_or_else(|e| e.into_inner()) = state.0.clone();
    }

    /// Applies dropout when the context trains and `p > 0`; the identity otherwise.
    pub fn forward(&self, x: &Tensor, ctx: &StepContext) -> Result<Tensor> {
        let Some(k) = ctx.dropout.filter(|_| self.p > 0.0) else {
            return Ok(x.clone());
        };
        let keep = 1.0 - self.p;
        let scale = (1.0 / keep) as f32;
        let (key, first_row) = (k.key, k.first_row);
        let rows = if x.rank() == 0 { 1 } else { x.dim(0)? };
        let per_row = x.elem_count() / rows.max(1);
        let mut state = self.rows.lock().unwrap_or_else(|e| e.into_inner());
        if state.0 != (key, first_row) {
            *state = ((key, first_row), vec![]);
        }
        let gens = &mut state.1;
        while gens.len() < rows {
            gens.push(Self::generator(self.seed, key, first_row + gens.len()));
        }
        if per_row == 0 {
            return Ok(x.clone());
        }
        // Each row from its own generator, so the rows are drawn on all threads.
        let mut mask = vec![0f32; x.elem_count()];
        mask.par_chunks_mut(per_row)
            .zip(gens[..rows].par_iter_mut())
            .for_each(|(row, rng)| {
                for m in row {
                    *m = if rng.bernoulli(keep) { scale } else { 0.0 };
                }
            });
        let mask = Tensor::from_vec(mask, x.shape(), x.device())?.to_dtype(x.dtype())?;
        lm_kernels::ops::mul_mask(x, &mask)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    /// Dropout against its definition: each row's mask is its own generator's Bernoulli draws in
    /// order (survivors scaled by 1/(1−p)), whichever thread draws the row, and the gradient of
    /// `Σ w·dropout(x)` is `w` times the same mask.
    #[test]
    fn dropout_masks_are_each_rows_draws_and_scale_the_gradient() {
        let (rows, per_row, p, seed) = (5, 333, 0.3, 7);
        let d = Dropout::new(p, seed);
        let ctx = StepContext::train(crate::MatmulPrecision::Highest, 11, 2);
        let values: Vec<f32> = (0..rows * per_row).map(|i| 1.0 + i as f32 / 64.0).collect();
        let x = Var::from_vec(values.clone(), (rows, per_row), &Device::Cpu).unwrap();
        let w: Vec<f32> = (0..rows * per_row).map(|i| (i % 13) as f32 - 6.0).collect();
        let wt = Tensor::from_vec(w.clone(), (rows, per_row), &Device::Cpu).unwrap();
        let y = d.forward(x.as_tensor(), &ctx).unwrap();
        let grads = (&y * &wt).unwrap().sum_all().unwrap().backward().unwrap();
        let y = y.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let g = grads.get(x.as_tensor()).unwrap();
        let g = g.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let scale = (1.0 / (1.0 - p)) as f32;
        let mut dropped = 0;
        for r in 0..rows {
            let mut rng = Dropout::generator(seed, 11, 2 + r);
            for c in 0..per_row {
                let i = r * per_row + c;
                let m = if rng.bernoulli(1.0 - p) { scale } else { 0.0 };
                dropped += usize::from(m == 0.0);
                assert_eq!(y[i], values[i] * m, "row {r}, column {c}");
                assert_eq!(g[i], w[i] * m, "gradient, row {r}, column {c}");
            }
        }
        // About p of the 1 665 values (the draws are the definition's; this only shows both
        // kinds of element were checked).
        assert!(dropped > 300 && dropped < 700, "{dropped}");
    }
}
