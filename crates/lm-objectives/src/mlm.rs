//! Masked language modeling (BERT), the chapter's noise function `A(x̃ | x)`:
//!
//! 1. choose positions `I` (15% of the tokens; never special tokens);
//! 2. for each `i ∈ I`: with probability 0.8 `x̃_i ← [MASK]`, with 0.1 keep `x_i`, with 0.1 put a
//!    random vocabulary token (never a special one);
//! 3. the model is scored on `I` only: labels are `x_i` on `I` and the ignore index elsewhere.
//!
//! Two ways to choose `I`: an exact count, `round(rate·L)` of the `L` maskable positions and at
//! least one (the chapter's and original BERT's definition), or an independent Bernoulli(rate)
//! per token (HuggingFace's `DataCollatorForLanguageModeling`). Whole-word masking selects all
//! pieces of a word together. Dynamic masking (RoBERTa) is [`MlmMasker::mask`] called each time an
//! example is drawn, with the masker's generator advancing: every epoch sees a fresh mask.

use crate::{ObjectiveError, Result, Rng, IGNORE_INDEX};

/// How the positions `I` are chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Selection {
    /// Exactly `max(1, round(rate · L))` of the `L` maskable positions.
    ExactCount,
    /// Each maskable position independently with probability `rate`.
    Bernoulli,
}

/// Masking hyperparameters; the defaults are BERT's.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MlmConfig {
    /// Fraction of tokens selected (0.15).
    pub rate: f64,
    /// Of the selected, the fraction replaced by `[MASK]` (0.8).
    pub mask_prob: f64,
    /// Of the selected, the fraction replaced by a random token (0.1); the rest are kept.
    pub random_prob: f64,
    /// Exact count or Bernoulli.
    pub selection: Selection,
}

impl Default for MlmConfig {
    fn default() -> Self {
        Self {
            rate: 0.15,
            mask_prob: 0.8,
            random_prob: 0.1,
            selection: Selection::ExactCount,
        }
    }
}

/// One masked example.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MlmExample {
    /// The corrupted tokens `x̃`.
    pub input_ids: Vec<u32>,
    /// `x_i` on the selected positions, [`IGNORE_INDEX`] elsewhere.
    pub labels: Vec<i64>,
}

/// Applies the noise function; holds the config, the vocabulary facts it needs and its generator.
#[derive(Debug, Clone)]
pub struct MlmMasker {
    cfg: MlmConfig,
    mask_id: u32,
    vocab_size: u32,
    special: Vec<bool>,
    /// Thresholds on a 32-bit uniform draw: below `t_mask` → [MASK], below `t_random` → random.
    t_mask: u32,
    t_random: u32,
    rng: Rng,
    scratch: Vec<u32>,
}

fn prob_threshold(p: f64) -> u32 {
    (p.clamp(0.0, 1.0) * 4_294_967_296.0).min(4_294_967_295.0) as u32
}

impl MlmMasker {
    /// A masker over a vocabulary of `vocab_size` ids where `special_ids` (which must include
    /// `mask_id`) are never selected nor sampled.
    pub fn new(
        cfg: MlmConfig,
        vocab_size: u32,
        mask_id: u32,
        special_ids: &[u32],
        seed: u64,
    ) -> Result<Self> {
        let bad = |key, value: f64, expected| {
            Err(ObjectiveError::InvalidConfig {
                key,
                value: value.to_string(),
                expected,
            })
        };
        if !(cfg.rate > 0.0 && cfg.rate < 1.0) {
            return bad("rate", cfg.rate, "a masking rate in (0, 1)");
        }
        if !(cfg.mask_prob >= 0.0
            && cfg.random_prob >= 0.0
            && cfg.mask_prob + cfg.random_prob <= 1.0)
        {
            return bad(
                "mask_prob",
                cfg.mask_prob,
                "mask_prob, random_prob ≥ 0 with a sum ≤ 1",
            );
        }
        if mask_id >= vocab_size {
            return Err(ObjectiveError::MissingSpecialToken(
                "[MASK] (mask_id ≥ vocab_size)",
            ));
        }
        let mut special = vec![false; vocab_size as usize];
        special[mask_id as usize] = true;
        for &s in special_ids {
            if s < vocab_size {
                special[s as usize] = true;
            }
        }
        if special.iter().all(|&s| s) {
            return bad(
                "vocab_size",
                vocab_size as f64,
                "at least one non-special token",
            );
        }
        Ok(Self {
            t_mask: prob_threshold(cfg.mask_prob),
            t_random: prob_threshold(cfg.mask_prob + cfg.random_prob),
            cfg,
            mask_id,
            vocab_size,
            special,
            rng: Rng::seed_from_u64(seed),
            scratch: Vec::new(),
        })
    }

    /// The generator's state (for checkpoints).
    pub fn rng(&self) -> &Rng {
        &self.rng
    }

    /// Replaces the generator (to resume a checkpointed stream).
    pub fn set_rng(&mut self, rng: Rng) {
        self.rng = rng;
    }

    fn is_special(&self, t: u32) -> bool {
        self.special.get(t as usize).copied().unwrap_or(true)
    }

    fn random_token(&mut self) -> u32 {
        loop {
            let t = self.rng.below(self.vocab_size as u64) as u32;
            if !self.special[t as usize] {
                return t;
            }
        }
    }

    /// Corrupts position `i` of `out` (already a copy of the input) and labels it.
    #[inline]
    fn corrupt(&mut self, tokens: &[u32], i: usize, out: &mut MlmExample) {
        out.labels[i] = tokens[i] as i64;
        let u = (self.rng.next_u64() >> 32) as u32;
        if u < self.t_mask {
            out.input_ids[i] = self.mask_id;
        } else if u < self.t_random {
            out.input_ids[i] = self.random_token();
        }
    }

    /// Masks `tokens` into `out` (buffers reused).
    pub fn mask_into(&mut self, tokens: &[u32], out: &mut MlmExample) -> Result<()> {
        out.input_ids.clear();
        out.input_ids.extend_from_slice(tokens);
        out.labels.clear();
        out.labels.resize(tokens.len(), IGNORE_INDEX);
        match self.cfg.selection {
            Selection::Bernoulli => {
                let t = prob_threshold(self.cfg.rate);
                let mut any_maskable = false;
                for i in 0..tokens.len() {
                    if self.is_special(tokens[i]) {
                        continue;
                    }
                    any_maskable = true;
                    if ((self.rng.next_u64() >> 32) as u32) < t {
                        self.corrupt(tokens, i, out);
                    }
                }
                if !any_maskable {
                    return Err(ObjectiveError::EmptySequence {
                        what: "masked LM input (no maskable token)",
                    });
                }
            }
            Selection::ExactCount => {
                let mut cand = std::mem::take(&mut self.scratch);
                cand.clear();
                cand.extend(
                    (0..tokens.len() as u32).filter(|&i| !self.is_special(tokens[i as usize])),
                );
                if cand.is_empty() {
                    self.scratch = cand;
                    return Err(ObjectiveError::EmptySequence {
                        what: "masked LM input (no maskable token)",
                    });
                }
                let k = exact_count(cand.len(), self.cfg.rate);
                // Partial Fisher–Yates: the first k entries become a uniform k-subset.
                for j in 0..k {
                    let r = j + self.rng.below((cand.len() - j) as u64) as usize;
                    cand.swap(j, r);
                    self.corrupt(tokens, cand[j] as usize, out);
                }
                self.scratch = cand;
            }
        }
        Ok(())
    }

    /// Masks `tokens`, returning a new example.
    pub fn mask(&mut self, tokens: &[u32]) -> Result<MlmExample> {
        let mut out = MlmExample::default();
        self.mask_into(tokens, &mut out)?;
        Ok(out)
    }

    /// Whole-word masking: `word_ids[i]` is the word of token `i` (`None` for special tokens);
    /// words are selected as units (exact mode: words are added in random order while the tokens
    /// covered stay within `round(rate·L)`, at least one word; Bernoulli mode: each word with
    /// probability `rate`), then every piece of a selected word gets the 80/10/10 treatment.
    pub fn mask_whole_words(
        &mut self,
        tokens: &[u32],
        word_ids: &[Option<u32>],
    ) -> Result<MlmExample> {
        if word_ids.len() != tokens.len() {
            return Err(ObjectiveError::BadTensor {
                name: "word_ids",
                expected: format!("{} entries, one per token", tokens.len()),
                got: format!("{} entries", word_ids.len()),
            });
        }
        // Words as (start, end) runs of equal word id over non-special tokens.
        let mut words: Vec<(usize, usize)> = Vec::new();
        for i in 0..tokens.len() {
            let Some(w) = word_ids[i] else { continue };
            if self.is_special(tokens[i]) {
                continue;
            }
            match words.last_mut() {
                Some((_, end)) if *end == i && word_ids[i - 1] == Some(w) => *end = i + 1,
                _ => words.push((i, i + 1)),
            }
        }
        if words.is_empty() {
            return Err(ObjectiveError::EmptySequence {
                what: "whole-word masked LM input (no word)",
            });
        }
        let mut out = MlmExample {
            input_ids: tokens.to_vec(),
            labels: vec![IGNORE_INDEX; tokens.len()],
        };
        let maskable: usize = words.iter().map(|(a, b)| b - a).sum();
        let mut chosen = Vec::new();
        match self.cfg.selection {
            Selection::Bernoulli => chosen.extend(
                words
                    .iter()
                    .copied()
                    .filter(|_| self.rng.bernoulli(self.cfg.rate)),
            ),
            Selection::ExactCount => {
                let budget = exact_count(maskable, self.cfg.rate);
                self.rng.shuffle(&mut words);
                let mut covered = 0;
                for &(a, b) in &words {
                    if chosen.is_empty() || covered + (b - a) <= budget {
                        covered += b - a;
                        chosen.push((a, b));
                    }
                    if covered >= budget {
                        break;
                    }
                }
            }
        }
        for (a, b) in chosen {
            for i in a..b {
                self.corrupt(tokens, i, &mut out);
            }
        }
        Ok(out)
    }
}

/// `max(1, round(rate · n))`, capped at `n`.
pub fn exact_count(n: usize, rate: f64) -> usize {
    ((n as f64 * rate).round() as usize).clamp(1, n.max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chapter_example_masks_exactly_the_rounded_count() {
        // [CLS] the mouse ate the cheese [SEP] with [CLS]=0, [SEP]=1, [MASK]=2; 10 positions → 15% = 1.5 → 2.
        let tokens = [0u32, 5, 6, 7, 5, 8, 9, 10, 11, 12, 13, 1];
        let mut m = MlmMasker::new(MlmConfig::default(), 20, 2, &[0, 1, 2], 7).unwrap();
        let ex = m.mask(&tokens).unwrap();
        let selected: Vec<usize> = (0..tokens.len())
            .filter(|&i| ex.labels[i] != IGNORE_INDEX)
            .collect();
        assert_eq!(selected.len(), 2);
        for &i in &selected {
            assert_eq!(ex.labels[i], tokens[i] as i64);
            assert!(i != 0 && i != tokens.len() - 1);
        }
        for (i, &t) in tokens.iter().enumerate() {
            if ex.labels[i] == IGNORE_INDEX {
                assert_eq!(ex.input_ids[i], t);
            }
        }
    }

    #[test]
    fn bad_configs_are_refused() {
        let c = MlmConfig {
            rate: 0.0,
            ..Default::default()
        };
        assert!(MlmMasker::new(c, 10, 2, &[], 0).is_err());
        let c = MlmConfig {
            mask_prob: 0.9,
            random_prob: 0.2,
            ..Default::default()
        };
        assert!(MlmMasker::new(c, 10, 2, &[], 0).is_err());
        assert!(MlmMasker::new(MlmConfig::default(), 10, 10, &[], 0).is_err());
        let mut m = MlmMasker::new(MlmConfig::default(), 10, 2, &[0, 1], 0).unwrap();
        assert!(m.mask(&[0, 1, 0]).is_err());
        assert!(m.mask(&[]).is_err());
    }
}
