//! Learning-rate schedules as composable values.
//!
//! A schedule maps a position — the number of optimizer steps taken, or the number of tokens seen
//! (GPT-3 warms up over its first 375 M tokens) — to a learning rate. Phases chain with
//! [`Schedule::Sequence`]: each runs for its own length, then hands over to the next; after the
//! last one ends, its final value holds.

use crate::error::{check, Result};

/// A learning-rate schedule. `value(x)` is the rate for the update made at position `x`
/// (0-based: the first update is at 0).
#[derive(Debug, Clone, PartialEq)]
pub enum Schedule {
    /// The same rate forever.
    Constant(f64),
    /// Linear interpolation from `from` to `to` over `length`.
    Linear {
        /// Value at 0.
        from: f64,
        /// Value at `length` and after.
        to: f64,
        /// Length of the phase (steps or tokens).
        length: f64,
    },
    /// Half a cosine from `from` down to `to` over `length`:
    /// `to + (from − to)·½(1 + cos(π·x/length))`.
    Cosine {
        /// Value at 0.
        from: f64,
        /// Value at `length` and after (GPT-3: 10% of the peak).
        to: f64,
        /// Length of the phase.
        length: f64,
    },
    /// T5's inverse square root: `peak · min(1, √(warmup / x))`, constant at `peak` before `warmup`.
    InverseSqrt {
        /// The rate up to `warmup`.
        peak: f64,
        /// Where the decay starts.
        warmup: f64,
    },
    /// Phases one after another. Each phase's length is its own (`Constant` and `InverseSqrt`
    /// never end, so they can only come last).
    Sequence(Vec<Schedule>),
}

impl Schedule {
    /// Linear warmup from 0 to `peak` over `warmup`, then cosine decay to `floor` at `total`
    /// (nanoGPT, GPT-3).
    pub fn warmup_cosine(peak: f64, floor: f64, warmup: f64, total: f64) -> Result<Self> {
        check(peak >= 0.0, "peak learning rate", peak, "≥ 0")?;
        check(
            (0.0..=peak).contains(&floor),
            "learning-rate floor",
            floor,
            "in [0, peak]",
        )?;
        check(warmup >= 0.0, "warmup", warmup, "≥ 0")?;
        check(total >= warmup, "total", total, "≥ warmup")?;
        Ok(Self::Sequence(vec![
            Self::Linear {
                from: 0.0,
                to: peak,
                length: warmup,
            },
            Self::Cosine {
                from: peak,
                to: floor,
                length: total - warmup,
            },
        ]))
    }

    /// Linear warmup from 0 to `peak`, then linear decay to 0 at `total` (BERT, fine-tuning).
    pub fn warmup_linear(peak: f64, warmup: f64, total: f64) -> Result<Self> {
        check(peak >= 0.0, "peak learning rate", peak, "≥ 0")?;
        check(
            total >= warmup && warmup >= 0.0,
            "total",
            total,
            "≥ warmup ≥ 0",
        )?;
        Ok(Self::Sequence(vec![
            Self::Linear {
                from: 0.0,
                to: peak,
                length: warmup,
            },
            Self::Linear {
                from: peak,
                to: 0.0,
                length: total - warmup,
            },
        ]))
    }

    /// Length of the phase; infinite for the ones that never end.
    pub fn length(&self) -> f64 {
        match self {
            Self::Constant(_) | Self::InverseSqrt { .. } => f64::INFINITY,
            Self::Linear { length, .. } | Self::Cosine { length, .. } => *length,
            Self::Sequence(phases) => phases.iter().map(Self::length).sum(),
        }
    }

    /// The learning rate at position `x` (steps or tokens).
    pub fn value(&self, x: f64) -> f64 {
        let x = x.max(0.0);
        match self {
            Self::Constant(v) => *v,
            Self::Linear { from, to, length } => {
                if x >= *length {
                    *to
                } else {
                    from + (to - from) * x / length
                }
            }
            Self::Cosine { from, to, length } => {
                if x >= *length {
                    *to
                } else {
                    to + (from - to) * 0.5 * (1.0 + (std::f64::consts::PI * x / length).cos())
                }
            }
            Self::InverseSqrt { peak, warmup } => {
                if x <= *warmup {
                    *peak
                } else {
                    peak * (warmup / x).sqrt()
                }
            }
            Self::Sequence(phases) => {
                let mut start = 0.0;
                for (i, phase) in phases.iter().enumerate() {
                    let len = phase.length();
                    if x < start + len || i + 1 == phases.len() {
                        return phase.value(x - start);
                    }
                    start += len;
                }
                0.0
            }
        }
    }
}

/// GPT-3's gradual batch-size increase: the batch grows linearly (in tokens seen) from `start`
/// to `end` sequences over the first `ramp_tokens` tokens, in multiples of `multiple`.
#[derive(Debug, Clone, PartialEq)]
pub struct BatchSizeRamp {
    /// Batch size (sequences) at the start.
    pub start: usize,
    /// Batch size after the ramp.
    pub end: usize,
    /// Tokens over which the batch grows.
    pub ramp_tokens: f64,
    /// Batch sizes are rounded down to a multiple of this (at least `multiple`).
    pub multiple: usize,
}

impl BatchSizeRamp {
    /// The batch size to use once `tokens_seen` tokens have been trained on.
    pub fn batch_size(&self, tokens_seen: f64) -> usize {
        let frac = if self.ramp_tokens <= 0.0 {
            1.0
        } else {
            (tokens_seen / self.ramp_tokens).clamp(0.0, 1.0)
        };
        let raw = self.start as f64 + (self.end as f64 - self.start as f64) * frac;
        let m = self.multiple.max(1);
        ((raw as usize / m) * m).max(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warmup_cosine_endpoints_and_boundary() {
        let s = Schedule::warmup_cosine(1e-3, 1e-4, 100.0, 2000.0).unwrap();
        assert_eq!(s.value(0.0), 0.0);
        assert!((s.value(50.0) - 5e-4).abs() < 1e-15);
        // Continuous at the warmup boundary: both sides tend to the peak.
        assert!((s.value(100.0) - 1e-3).abs() < 1e-15);
        assert!((s.value(99.999) - 1e-3).abs() < 1e-7);
        // Midway through the decay, the cosine is at the mean of peak and floor.
        assert!((s.value(1050.0) - 5.5e-4).abs() < 1e-12);
        assert!((s.value(2000.0) - 1e-4).abs() < 1e-15);
        assert!((s.value(1e9) - 1e-4).abs() < 1e-15);
    }

    #[test]
    fn inverse_sqrt_is_t5s() {
        let s = Schedule::InverseSqrt {
            peak: 0.01,
            warmup: 10_000.0,
        };
        assert_eq!(s.value(5_000.0), 0.01);
        assert!((s.value(40_000.0) - 0.005).abs() < 1e-15);
    }

    #[test]
    fn bad_schedules_are_refused() {
        assert!(Schedule::warmup_cosine(1e-3, 2e-3, 10.0, 100.0).is_err());
        assert!(Schedule::warmup_cosine(1e-3, 1e-4, 200.0, 100.0).is_err());
        assert!(Schedule::warmup_cosine(-1.0, 0.0, 1.0, 2.0).is_err());
    }

    #[test]
    fn batch_ramp_grows_in_multiples() {
        let r = BatchSizeRamp {
            start: 32,
            end: 512,
            ramp_tokens: 1000.0,
            multiple: 32,
        };
        assert_eq!(r.batch_size(0.0), 32);
        assert_eq!(r.batch_size(500.0), 256); // 32 + 480·½ = 272, down to a multiple of 32
        assert_eq!(r.batch_size(5000.0), 512);
    }
}
