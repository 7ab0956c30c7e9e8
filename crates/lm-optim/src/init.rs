//! Parameter initialization.
//!
//! Every initializer is keyed: the values of a tensor are a function of `(seed, name)` alone, so a
//! model initializes identically whatever order its parameters are created in, on every device.
//!
//! - [`fan_in_normal`]: the chapter's `N(0, 1/n)` for `W ∈ R^{m×n}` (n = fan-in).
//! - [`xavier_normal`], [`xavier_uniform`]: Glorot & Bengio, variance `2/(n_in + n_out)`.
//! - [`gpt2_std`]: GPT-2's `N(0, 0.02)`, with residual output projections scaled by `1/√N`.
//! - [`t5_std`]: T5's scheme (no `1/√d` in attention, so queries are drawn smaller instead).

use candle_core::{DType, Device, Shape, Tensor};

/// A deterministic generator for one tensor, keyed by a seed and the parameter's name.
struct KeyedNormal {
    state: u64,
}

impl KeyedNormal {
    fn new(seed: u64, name: &str) -> Self {
        // FNV-1a of the name, mixed with the seed.
        let mut h = 0xcbf2_9ce4_8422_2325u64 ^ seed.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        for b in name.bytes() {
            h ^= b as u64;
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        Self { state: h }
    }

    fn next_u64(&mut self) -> u64 {
        // SplitMix64.
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Box–Muller, both outputs used.
    fn fill_normal(&mut self, out: &mut [f32], std: f64) {
        for pair in out.chunks_mut(2) {
            let u1 = 1.0 - self.uniform();
            let u2 = self.uniform();
            let r = (-2.0 * u1.ln()).sqrt() * std;
            let t = std::f64::consts::TAU * u2;
            pair[0] = (r * t.cos()) as f32;
            if pair.len() > 1 {
                pair[1] = (r * t.sin()) as f32;
            }
        }
    }
}

/// `N(0, std²)` values for the tensor `name`, keyed by `seed`.
pub fn normal(
    shape: impl Into<Shape>,
    std: f64,
    seed: u64,
    name: &str,
    dtype: DType,
    device: &Device,
) -> candle_core::Result<Tensor> {
    let shape = shape.into();
    let data = normal_values(shape.elem_count(), std, seed, name);
    Tensor::from_vec(data, shape, device)?.to_dtype(dtype)
}

/// The `n` values of [`normal`] (f32, in order), for a caller that builds its own buffer.
pub fn normal_values(n: usize, std: f64, seed: u64, name: &str) -> Vec<f32> {
    let mut data = vec![0f32; n];
    KeyedNormal::new(seed, name).fill_normal(&mut data, std);
    data
}

/// `U(−a, a)` values for the tensor `name`, keyed by `seed`.
pub fn uniform(
    shape: impl Into<Shape>,
    a: f64,
    seed: u64,
    name: &str,
    dtype: DType,
    device: &Device,
) -> candle_core::Result<Tensor> {
    let shape = shape.into();
    let data = uniform_values(shape.elem_count(), a, seed, name);
    Tensor::from_vec(data, shape, device)?.to_dtype(dtype)
}

/// The `n` values of [`uniform`] (f32, in order), for a caller that builds its own buffer.
pub fn uniform_values(n: usize, a: f64, seed: u64, name: &str) -> Vec<f32> {
    let mut g = KeyedNormal::new(seed, name);
    (0..n)
        .map(|_| ((2.0 * g.uniform() - 1.0) * a) as f32)
        .collect()
}

/// Standard deviation of the chapter's `N(0, 1/n)` for a weight with fan-in `n`.
pub fn fan_in_std(fan_in: usize) -> f64 {
    1.0 / (fan_in as f64).sqrt()
}

/// The chapter's `N(0, 1/n)` for `W ∈ R^{m×n}` (shape `(m, n)`, fan-in `n`).
pub fn fan_in_normal(
    m: usize,
    n: usize,
    seed: u64,
    name: &str,
    device: &Device,
) -> candle_core::Result<Tensor> {
    normal((m, n), fan_in_std(n), seed, name, DType::F32, device)
}

/// Xavier/Glorot normal: `N(0, 2/(fan_in + fan_out))`.
pub fn xavier_normal(
    fan_out: usize,
    fan_in: usize,
    seed: u64,
    name: &str,
    device: &Device,
) -> candle_core::Result<Tensor> {
    let std = (2.0 / (fan_in + fan_out) as f64).sqrt();
    normal((fan_out, fan_in), std, seed, name, DType::F32, device)
}

/// Xavier/Glorot uniform: `U(−a, a)` with `a = √(6/(fan_in + fan_out))`.
pub fn xavier_uniform(
    fan_out: usize,
    fan_in: usize,
    seed: u64,
    name: &str,
    device: &Device,
) -> candle_core::Result<Tensor> {
    let a = (6.0 / (fan_in + fan_out) as f64).sqrt();
    uniform((fan_out, fan_in), a, seed, name, DType::F32, device)
}

/// GPT-2's standard deviation: 0.02, divided by `√N` for the output projections of residual
/// branches, `N` being the number of residual layers (2 per block: attention and MLP).
pub fn gpt2_std(residual_projection: bool, n_residual_layers: usize) -> f64 {
    if residual_projection {
        0.02 / (n_residual_layers as f64).sqrt()
    } else {
        0.02
    }
}

/// Which T5 weight a standard deviation is for (Mesh TensorFlow's scheme as in HuggingFace's
/// `T5PreTrainedModel._init_weights`, with `factor = 1`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum T5Weight {
    /// Query projection: `(d_model · d_kv)^−½`. T5 has no `1/√d_kv` in attention, so the scale
    /// moves into the initialization of the queries.
    Query,
    /// Key and value projections: `d_model^−½`.
    KeyValue,
    /// Attention output projection: `(n_heads · d_kv)^−½`.
    AttentionOutput,
    /// Feed-forward input (`wi`): `d_model^−½`.
    FeedForwardIn,
    /// Feed-forward output (`wo`): `d_ff^−½`.
    FeedForwardOut,
    /// Shared token embedding: 1.0.
    Embedding,
}

/// T5's standard deviation for a weight.
pub fn t5_std(which: T5Weight, d_model: usize, d_kv: usize, n_heads: usize, d_ff: usize) -> f64 {
    let inv_sqrt = |x: usize| 1.0 / (x as f64).sqrt();
    match which {
        T5Weight::Query => inv_sqrt(d_model * d_kv),
        T5Weight::KeyValue | T5Weight::FeedForwardIn => inv_sqrt(d_model),
        T5Weight::AttentionOutput => inv_sqrt(n_heads * d_kv),
        T5Weight::FeedForwardOut => inv_sqrt(d_ff),
        T5Weight::Embedding => 1.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyed_init_is_reproducible_and_name_dependent() {
        let d = Device::Cpu;
        let a = normal(100, 0.02, 1, "w", DType::F32, &d)
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let b = normal(100, 0.02, 1, "w", DType::F32, &d)
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let c = normal(100, 0.02, 1, "v", DType::F32, &d)
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn fan_in_normal_has_variance_one_over_n() {
        let (m, n) = (256, 400);
        let w = fan_in_normal(m, n, 0, "w", &Device::Cpu).unwrap();
        let xs = w.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let count = xs.len() as f64;
        let var = xs.iter().map(|&x| (x as f64).powi(2)).sum::<f64>() / count;
        // Sample variance of N(0, σ²) has sd σ²·√(2/count); allow 5 sd.
        let sigma2 = 1.0 / n as f64;
        assert!(
            (var - sigma2).abs() < 5.0 * sigma2 * (2.0 / count).sqrt(),
            "{var}"
        );
    }

    #[test]
    fn gpt2_and_t5_scales() {
        assert_eq!(gpt2_std(false, 8), 0.02);
        assert!((gpt2_std(true, 8) - 0.02 / 8f64.sqrt()).abs() < 1e-15);
        assert!(
            (t5_std(T5Weight::Query, 512, 64, 8, 2048) - 1.0 / (512.0f64 * 64.0).sqrt()).abs()
                < 1e-15
        );
    }
}
