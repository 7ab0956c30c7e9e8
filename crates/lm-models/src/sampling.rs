//! Choosing the next token from logits: greedy, temperature and top-k.

use lm_objectives::Rng;

/// How to pick the next token.
#[derive(Debug, Clone, PartialEq)]
pub struct Sampling {
    /// Softmax temperature; 0 means greedy (argmax).
    pub temperature: f64,
    /// Keep only the `k` most likely tokens before sampling.
    pub top_k: Option<usize>,
    /// Nucleus sampling: keep the smallest set of most likely tokens whose probability reaches `p`.
    pub top_p: Option<f64>,
}

impl Sampling {
    /// Always the most likely token.
    pub fn greedy() -> Self {
        Self {
            temperature: 0.0,
            top_k: None,
            top_p: None,
        }
    }

    /// Samples a token id from `logits`.
    pub fn sample(&self, logits: &[f32], rng: &mut Rng) -> u32 {
        let argmax = || {
            logits
                .iter()
                .enumerate()
                .fold((0usize, f32::NEG_INFINITY), |best, (i, &v)| {
                    if v > best.1 {
                        (i, v)
                    } else {
                        best
                    }
                })
                .0 as u32
        };
        if self.temperature <= 0.0 || logits.is_empty() {
            return argmax();
        }
        let mut order: Vec<usize> = (0..logits.len()).collect();
        if let Some(k) = self.top_k.filter(|&k| k > 0 && k < logits.len()) {
            order.select_nth_unstable_by(k - 1, |&a, &b| logits[b].total_cmp(&logits[a]));
            order.truncate(k);
        }
        let max = order
            .iter()
            .map(|&i| logits[i])
            .fold(f32::NEG_INFINITY, f32::max) as f64;
        let weights: Vec<f64> = order
            .iter()
            .map(|&i| ((logits[i] as f64 - max) / self.temperature).exp())
            .collect();
        let total: f64 = weights.iter().sum();
        let mut u = rng.next_f64() * total;
        for (&i, w) in order.iter().zip(&weights) {
            if u < *w {
                return i as u32;
            }
            u -= w;
        }
        order[order.len() - 1] as u32
    }
}

/// What an encoder-decoder's autoregressive decoding does: start from `start`, stop at `eos` or
/// after `max_new_tokens`, pick tokens with `sampling`, with or without the key/value cache.
pub(crate) struct Decode<'a> {
    pub start: u32,
    pub eos: u32,
    pub max_new_tokens: usize,
    pub sampling: &'a Sampling,
    pub use_cache: bool,
}

/// Runs [`Decode`]: `step(ids, cache)` returns logits `[1, t, V]` for the ids given. With the
/// cache, each step passes only the newest token; without, the whole prefix again. Both give the
/// same tokens.
pub(crate) fn decode_loop(
    spec: Decode<'_>,
    rng: &mut Rng,
    device: &candle_core::Device,
    mut step: impl FnMut(
        &candle_core::Tensor,
        Option<&mut crate::layers::KvCache>,
    ) -> crate::Result<candle_core::Tensor>,
) -> crate::Result<Vec<u32>> {
    let Decode {
        start,
        eos,
        max_new_tokens,
        sampling,
        use_cache,
    } = spec;
    let mut tokens = vec![start];
    let mut cache = crate::layers::KvCache::new();
    for _ in 0..max_new_tokens {
        let logits = if use_cache {
            let ids =
                candle_core::Tensor::new(&tokens[tokens.len() - 1..], device)?.unsqueeze(0)?;
            step(&ids, Some(&mut cache))?
        } else {
            let ids = candle_core::Tensor::new(tokens.as_slice(), device)?.unsqueeze(0)?;
            step(&ids, None)?
        };
        let t = logits.dim(1)?;
        let last: Vec<f32> = logits
            .squeeze(0)?
            .get(t - 1)?
            .to_dtype(candle_core::DType::F32)?
            .to_vec1()?;
        let next = sampling.sample(&last, rng);
        tokens.push(next);
        if next == eos {
            break;
        }
    }
    Ok(tokens[1..].to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_and_top1_pick_the_argmax() {
        let logits = [0.1, 3.0, -1.0, 2.9];
        let mut rng = Rng::seed_from_u64(0);
        assert_eq!(Sampling::greedy().sample(&logits, &mut rng), 1);
        let top1 = Sampling {
            temperature: 1.0,
            top_k: Some(1),
            top_p: None,
        };
        for _ in 0..20 {
            assert_eq!(top1.sample(&logits, &mut rng), 1);
        }
        let top2 = Sampling {
            temperature: 1.0,
            top_k: Some(2),
            top_p: None,
        };
        for _ in 0..50 {
            assert!(matches!(top2.sample(&logits, &mut rng), 1 | 3));
        }
        // Nucleus: p(1) ≈ 0.50, p(3) ≈ 0.45 at T = 1; top-p 0.5 keeps token 1 alone only when its
        // mass reaches 0.5, else {1, 3}; top-p 0.9 never reaches tokens 0 and 2 (≈ 0.05 together).
        let nucleus = Sampling {
            temperature: 1.0,
            top_k: None,
            top_p: Some(0.9),
        };
        for _ in 0..50 {
            assert!(matches!(nucleus.sample(&logits, &mut rng), 1 | 3));
        }
    }
}
