//! T5's span corruption ("i.i.d. noise, replace spans") and prefix LM.
//!
//! For a sequence of length `L`:
//! - `n_noise = clamp(round(L · density), 1, L − 1)` noise tokens;
//! - `n_spans = max(1, round(n_noise / mean_span_length))` noise spans
//!   (both rounded half to even, as T5's `np.round`);
//! - noise and non-noise tokens are each split into `n_spans` non-empty runs by a uniformly random
//!   segmentation, and the runs are interleaved starting with non-noise;
//! - the input keeps the non-noise tokens and replaces each noise span with one sentinel
//!   (`<extra_id_0>`, `<extra_id_1>`, …), then EOS; the target is each sentinel followed by the
//!   span it replaced, then EOS.
//!
//! The chapter's example: `the mouse ate the cheese` → input `the <X> ate <Y> cheese`,
//! target `<X> mouse <Y> the`.

use crate::{ObjectiveError, Result, Rng};

/// Span-corruption options; defaults are T5's.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SpanCorruptionConfig {
    /// Fraction of tokens that are noise (0.15).
    pub noise_density: f64,
    /// Mean noise span length (3.0).
    pub mean_span_length: f64,
}

impl Default for SpanCorruptionConfig {
    fn default() -> Self {
        Self {
            noise_density: 0.15,
            mean_span_length: 3.0,
        }
    }
}

impl SpanCorruptionConfig {
    fn validate(&self) -> Result<()> {
        if !(self.noise_density > 0.0 && self.noise_density < 1.0) {
            return Err(ObjectiveError::InvalidConfig {
                key: "noise_density",
                value: self.noise_density.to_string(),
                expected: "a density in (0, 1)",
            });
        }
        if self.mean_span_length.is_nan() || self.mean_span_length < 1.0 {
            return Err(ObjectiveError::InvalidConfig {
                key: "mean_span_length",
                value: self.mean_span_length.to_string(),
                expected: "a mean span length ≥ 1",
            });
        }
        Ok(())
    }

    /// `(n_noise, n_spans)` for a sequence of `len` tokens.
    pub fn counts(&self, len: usize) -> (usize, usize) {
        let n_noise = ((len as f64 * self.noise_density).round_ties_even() as usize)
            .clamp(1, len.saturating_sub(1).max(1));
        let n_spans = ((n_noise as f64 / self.mean_span_length).round_ties_even() as usize).max(1);
        (n_noise, n_spans)
    }

    /// T5's `compute_input_and_target_lengths`: the raw length whose corruption gives inputs of at
    /// most `inputs_length` tokens (EOS included), and the resulting target length.
    /// For T5's defaults, 512 inputs come from 568 raw tokens with 114 targets.
    pub fn raw_length_for_inputs(&self, inputs_length: usize) -> Result<(usize, usize)> {
        self.validate()?;
        let lengths = |raw: usize| {
            let n_noise = (raw as f64 * self.noise_density).round_ties_even() as usize;
            let n_spans = (n_noise as f64 / self.mean_span_length).round_ties_even() as usize;
            (raw - n_noise + n_spans + 1, n_noise + n_spans + 1)
        };
        let mut raw = inputs_length;
        while lengths(raw + 1).0 <= inputs_length {
            raw += 1;
        }
        let (_, mut targets) = lengths(raw);
        // T5's adjustment so that at density ½ the targets are not longer than the inputs.
        if self.noise_density == 0.5 && targets > inputs_length {
            raw -= 1;
            targets -= 1;
        }
        Ok((raw, targets))
    }
}

/// The sentinel ids: `<extra_id_k>` is `first - k` when `descending` (T5's vocabulary puts them at
/// the end, `<extra_id_0>` = vocab − 1), else `first + k`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sentinels {
    /// Id of `<extra_id_0>`.
    pub first: u32,
    /// How many exist (T5: 100).
    pub count: u32,
    /// Whether ids go down from `first`.
    pub descending: bool,
}

impl Sentinels {
    /// The id of `<extra_id_k>`.
    pub fn id(&self, k: u32) -> u32 {
        if self.descending {
            self.first - k
        } else {
            self.first + k
        }
    }
}

/// One span-corrupted example.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SpanCorruptionExample {
    /// Non-noise tokens with a sentinel per noise span, then EOS.
    pub input_ids: Vec<u32>,
    /// Each sentinel followed by its span, then EOS.
    pub target_ids: Vec<u32>,
}

/// A uniformly random split of `n` items into `k` non-empty runs: returns the `k` lengths.
/// (Choose `k − 1` distinct cut points among the `n − 1` gaps.)
fn random_segmentation(
    n: usize,
    k: usize,
    rng: &mut Rng,
    lengths: &mut Vec<usize>,
    scratch: &mut Vec<u32>,
) {
    lengths.clear();
    if k == 1 {
        lengths.push(n);
        return;
    }
    scratch.clear();
    scratch.extend(1..n as u32);
    for j in 0..k - 1 {
        let r = j + rng.below((scratch.len() - j) as u64) as usize;
        scratch.swap(j, r);
    }
    let cuts = &mut scratch[..k - 1];
    cuts.sort_unstable();
    let mut prev = 0;
    for &c in cuts.iter() {
        lengths.push(c as usize - prev);
        prev = c as usize;
    }
    lengths.push(n - prev);
}

/// Applies span corruption; reusable buffers make it allocation-free in steady state.
#[derive(Debug, Clone)]
pub struct SpanCorruptor {
    cfg: SpanCorruptionConfig,
    sentinels: Sentinels,
    eos: u32,
    noise_lengths: Vec<usize>,
    keep_lengths: Vec<usize>,
    scratch: Vec<u32>,
}

impl SpanCorruptor {
    /// A corruptor with the given sentinel ids and EOS id.
    pub fn new(cfg: SpanCorruptionConfig, sentinels: Sentinels, eos: u32) -> Result<Self> {
        cfg.validate()?;
        if sentinels.count == 0 || (sentinels.descending && sentinels.first + 1 < sentinels.count) {
            return Err(ObjectiveError::MissingSpecialToken("<extra_id_k> sentinel"));
        }
        Ok(Self {
            cfg,
            sentinels,
            eos,
            noise_lengths: vec![],
            keep_lengths: vec![],
            scratch: vec![],
        })
    }

    /// The noise mask of a sequence of `len` tokens (true = noise), for inspection and tests.
    pub fn noise_mask(&mut self, len: usize, rng: &mut Rng) -> Result<Vec<bool>> {
        self.segment(len, rng)?;
        let mut mask = Vec::with_capacity(len);
        for (&k, &n) in self.keep_lengths.iter().zip(&self.noise_lengths) {
            mask.extend(std::iter::repeat_n(false, k));
            mask.extend(std::iter::repeat_n(true, n));
        }
        Ok(mask)
    }

    fn segment(&mut self, len: usize, rng: &mut Rng) -> Result<()> {
        if len < 2 {
            return Err(ObjectiveError::TooShort {
                what: "span corruption input",
                len,
                min: 2,
            });
        }
        let (n_noise, n_spans) = self.cfg.counts(len);
        // Each of the n_spans non-noise runs needs a token, and so does each noise run.
        let n_spans = n_spans.min(len - n_noise).min(n_noise);
        if n_spans as u32 > self.sentinels.count {
            return Err(ObjectiveError::InvalidConfig {
                key: "sentinels.count",
                value: self.sentinels.count.to_string(),
                expected: "at least as many sentinels as noise spans",
            });
        }
        random_segmentation(
            n_noise,
            n_spans,
            rng,
            &mut self.noise_lengths,
            &mut self.scratch,
        );
        random_segmentation(
            len - n_noise,
            n_spans,
            rng,
            &mut self.keep_lengths,
            &mut self.scratch,
        );
        Ok(())
    }

    /// Corrupts `tokens` into `out`.
    pub fn corrupt_into(
        &mut self,
        tokens: &[u32],
        rng: &mut Rng,
        out: &mut SpanCorruptionExample,
    ) -> Result<()> {
        self.segment(tokens.len(), rng)?;
        out.input_ids.clear();
        out.target_ids.clear();
        let mut pos = 0;
        for (k, (&keep, &noise)) in self
            .keep_lengths
            .iter()
            .zip(&self.noise_lengths)
            .enumerate()
        {
            let sentinel = self.sentinels.id(k as u32);
            out.input_ids.extend_from_slice(&tokens[pos..pos + keep]);
            out.input_ids.push(sentinel);
            pos += keep;
            out.target_ids.push(sentinel);
            out.target_ids.extend_from_slice(&tokens[pos..pos + noise]);
            pos += noise;
        }
        out.input_ids.push(self.eos);
        out.target_ids.push(self.eos);
        Ok(())
    }

    /// Corrupts `tokens`.
    pub fn corrupt(&mut self, tokens: &[u32], rng: &mut Rng) -> Result<SpanCorruptionExample> {
        let mut out = SpanCorruptionExample::default();
        self.corrupt_into(tokens, rng, &mut out)?;
        Ok(out)
    }
}

/// Puts each target span back in place of its sentinel: the inverse of span corruption
/// (EOS markers are dropped).
pub fn restore_spans(ex: &SpanCorruptionExample, sentinels: &Sentinels, eos: u32) -> Vec<u32> {
    let is_sentinel = |t: u32| (0..sentinels.count).any(|k| sentinels.id(k) == t);
    let mut spans: Vec<(u32, Vec<u32>)> = Vec::new();
    for &t in ex.target_ids.iter().filter(|&&t| t != eos) {
        if is_sentinel(t) {
            spans.push((t, vec![]));
        } else if let Some((_, s)) = spans.last_mut() {
            s.push(t);
        }
    }
    let mut out = Vec::new();
    for &t in ex.input_ids.iter().filter(|&&t| t != eos) {
        match spans.iter().find(|(s, _)| *s == t) {
            Some((_, span)) => out.extend_from_slice(span),
            None => out.push(t),
        }
    }
    out
}

/// T5's prefix LM: the first `split` tokens are the input, the rest the target
/// (`[the, mouse] ⇒ [ate, the, cheese]`).
pub fn prefix_lm(tokens: &[u32], split: usize) -> Result<(Vec<u32>, Vec<u32>)> {
    if tokens.len() < 2 {
        return Err(ObjectiveError::TooShort {
            what: "prefix LM sequence",
            len: tokens.len(),
            min: 2,
        });
    }
    if split == 0 || split >= tokens.len() {
        return Err(ObjectiveError::InvalidConfig {
            key: "split",
            value: split.to_string(),
            expected: "a split point with a non-empty prefix and target",
        });
    }
    Ok((tokens[..split].to_vec(), tokens[split..].to_vec()))
}

/// Prefix LM at a uniformly random split point in `1..len`.
pub fn random_prefix_lm(tokens: &[u32], rng: &mut Rng) -> Result<(Vec<u32>, Vec<u32>)> {
    if tokens.len() < 2 {
        return Err(ObjectiveError::TooShort {
            what: "prefix LM sequence",
            len: tokens.len(),
            min: 2,
        });
    }
    prefix_lm(tokens, 1 + rng.below(tokens.len() as u64 - 1) as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn t5_lengths_568_to_512_and_114() {
        let cfg = SpanCorruptionConfig::default();
        assert_eq!(cfg.raw_length_for_inputs(512).unwrap(), (568, 114));
        let (n_noise, n_spans) = cfg.counts(568);
        assert_eq!((n_noise, n_spans), (85, 28));
    }

    #[test]
    fn mouse_example_roundtrips() {
        // the=1 mouse=2 ate=3 the=1 cheese=4; sentinels 99, 98, …; EOS = 0.
        let tokens = [1u32, 2, 3, 1, 4];
        let s = Sentinels {
            first: 99,
            count: 10,
            descending: true,
        };
        let cfg = SpanCorruptionConfig {
            noise_density: 0.4,
            mean_span_length: 1.0,
        };
        let mut c = SpanCorruptor::new(cfg, s, 0).unwrap();
        let ex = c.corrupt(&tokens, &mut Rng::seed_from_u64(1)).unwrap();
        // 2 noise tokens in 2 spans: inputs 3 kept + 2 sentinels + EOS, targets 2 + 2 + EOS.
        assert_eq!(ex.input_ids.len(), 6);
        assert_eq!(ex.target_ids.len(), 5);
        assert_eq!(ex.target_ids[0], 99);
        assert_eq!(restore_spans(&ex, &s, 0), tokens);
        assert_eq!(prefix_lm(&tokens, 2).unwrap(), (vec![1, 2], vec![3, 1, 4]));
    }
}
