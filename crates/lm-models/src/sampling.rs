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

/// CTRL's repetition penalty as transformers applies it: each distinct token of `history` has
/// its logit divided by `penalty` when positive, multiplied when negative (1: unchanged).
pub fn repetition_penalty(row: &mut [f32], history: &[u32], penalty: f64) {
    if penalty == 1.0 {
        return;
    }
    let p = penalty as f32;
    let mut seen = std::collections::HashSet::new();
    for &t in history {
        if let Some(v) = row.get_mut(t as usize).filter(|_| seen.insert(t)) {
            *v = if *v < 0.0 { *v * p } else { *v / p };
        }
    }
}

/// transformers' no-repeat n-gram rule: every token that would complete an `n`-gram already in
/// `history` (its last `n − 1` tokens followed by it somewhere before) is banned (0: off).
pub fn ban_repeated_ngrams(row: &mut [f32], history: &[u32], n: usize) {
    if n == 0 || history.len() + 1 < n {
        return;
    }
    let prefix = &history[history.len() + 1 - n..];
    for w in history.windows(n) {
        if w[..n - 1] == *prefix {
            if let Some(v) = row.get_mut(w[n - 1] as usize) {
                *v = f32::NEG_INFINITY;
            }
        }
    }
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

    /// CTRL's penalty by hand: 2.0 on tokens 1 and 3 (3 twice in the history, penalized once):
    /// a positive logit halves, a negative one doubles, the others stay.
    #[test]
    fn repetition_penalty_divides_positive_and_multiplies_negative_logits() {
        let mut row = [1.0, 3.0, 0.5, -1.5];
        repetition_penalty(&mut row, &[3, 1, 3], 2.0);
        assert_eq!(row, [1.0, 1.5, 0.5, -3.0]);
        let mut same = [1.0, -1.0];
        repetition_penalty(&mut same, &[0, 1], 1.0);
        assert_eq!(same, [1.0, -1.0]);
    }

    /// No repeated 3-gram: after `… 4 5` where `4 5 6` and `4 5 7` occurred, 6 and 7 are banned;
    /// bigrams ban every token that followed the last one; too short a history bans nothing.
    #[test]
    fn repeated_ngrams_are_banned_as_transformers_bans_them() {
        let hist = [4, 5, 6, 1, 4, 5, 7, 2, 4, 5];
        let mut row = [0.0f32; 8];
        ban_repeated_ngrams(&mut row, &hist, 3);
        let banned: Vec<usize> = (0..8).filter(|&i| row[i] == f32::NEG_INFINITY).collect();
        assert_eq!(banned, vec![6, 7]);
        let mut row = [0.0f32; 8];
        ban_repeated_ngrams(&mut row, &hist, 2);
        let banned: Vec<usize> = (0..8).filter(|&i| row[i] == f32::NEG_INFINITY).collect();
        assert_eq!(banned, vec![6, 7]);
        let mut row = [0.0f32; 8];
        ban_repeated_ngrams(&mut row, &[4], 3);
        assert!(row.iter().all(|&v| v == 0.0));
    }

    /// The settings a config's keys give, and their processors in order: the forced first token
    /// at step 0, the end token banned before `min_new_tokens`, the forced end at the last step.
    #[test]
    fn generation_settings_read_from_a_config_and_process_a_row() {
        use crate::seq2seq::GenerationConfig;
        let extra: serde_json::Map<String, serde_json::Value> = serde_json::from_value(
            serde_json::json!({"min_length": 3, "forced_bos_token_id": 0, "forced_eos_token_id": 2,
                               "no_repeat_ngram_size": 3, "repetition_penalty": 1.2}),
        )
        .unwrap();
        let gen = GenerationConfig::from_model_config(4, 2, 2, 1, &extra);
        assert_eq!(
            (
                gen.min_new_tokens,
                gen.forced_bos_token_id,
                gen.forced_eos_token_id
            ),
            (2, Some(0), Some(2))
        );
        assert_eq!((gen.no_repeat_ngram_size, gen.repetition_penalty), (3, 1.2));
        let argmax = |step: usize, logits: [f32; 4]| {
            let mut row = logits;
            gen.process(&mut row, &[2], step);
            Sampling::greedy().sample(&row, &mut Rng::seed_from_u64(0))
        };
        assert_eq!(argmax(0, [0.0, 1.0, 5.0, 0.0]), 0); // forced first token
        assert_eq!(argmax(1, [0.0, 1.0, 5.0, 0.0]), 1); // the end token (2) banned below 2 tokens
        assert_eq!(argmax(2, [0.0, 1.0, 5.0, 0.0]), 2);
        assert_eq!(argmax(3, [0.0, 9.0, 5.0, 0.0]), 2); // forced last token
    }
}
