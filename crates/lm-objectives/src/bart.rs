//! BART's denoising transforms. The model reads a corrupted document and is trained to
//! reconstruct the original (the target is the original text). Each transform is optional and
//! they compose in fairseq's order: sentence permutation, document rotation, token deletion,
//! text infilling.
//!
//! - **Text infilling**: span lengths are drawn from Poisson(λ = 3) until they add up to 30% of the
//!   tokens (or words); each span is replaced by a single `[MASK]` (a span of length 0 inserts
//!   one). [`SpanPlacement::Fairseq`] (the default) places the spans as fairseq's
//!   `add_whole_word_mask` does — at random starts that may overlap, overlapping spans merging into
//!   one, so about 26.8% of a 512-token row ends up masked — and [`text_infilling_words`] counts
//!   spans in whole words; [`SpanPlacement::Exact`] places them without overlap, masking exactly
//!   the budget.
//! - **Sentence permutation**: the document's sentences are shuffled.
//! - **Token deletion**: each token is dropped with a probability.
//! - **Document rotation**: the document is rotated to start at a uniformly chosen token.

use crate::{ObjectiveError, Result, Rng};

/// Where text infilling puts its spans.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SpanPlacement {
    /// fairseq's `add_whole_word_mask` (BART's pretraining): `ceil(ratio · words)` words of
    /// budget, the spans started at distinct random word starts; a span that runs into another
    /// swallows it, so less than the budget is masked.
    #[default]
    Fairseq,
    /// `round(ratio · tokens)` tokens exactly, spans placed in the gaps between kept tokens so
    /// that they never overlap.
    Exact,
}

/// Text-infilling options; defaults are BART's.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct InfillingConfig {
    /// Fraction of tokens masked (0.3).
    pub mask_ratio: f64,
    /// Poisson rate of span lengths (3.0).
    pub lambda: f64,
    /// The `[MASK]` id.
    pub mask: u32,
    /// How the spans are placed.
    pub placement: SpanPlacement,
}

/// One infilled sequence: the noised tokens and the spans each `[MASK]` replaced, in order.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Infilled {
    /// Tokens with each span replaced by one `[MASK]`.
    pub input_ids: Vec<u32>,
    /// For each `[MASK]` inserted, left to right, the tokens it stands for (possibly none).
    pub spans: Vec<Vec<u32>>,
}

fn poisson(lambda: f64, rng: &mut Rng) -> usize {
    // Knuth's method; λ is small (≈3) here.
    let limit = (-lambda).exp();
    let mut k = 0;
    let mut p = rng.next_f64();
    while p > limit {
        k += 1;
        p *= rng.next_f64();
    }
    k
}

fn check_infilling(tokens: &[u32], cfg: &InfillingConfig) -> Result<()> {
    if cfg.lambda.is_nan() || cfg.lambda <= 0.0 {
        return Err(ObjectiveError::InvalidConfig {
            key: "lambda",
            value: cfg.lambda.to_string(),
            expected: "a Poisson rate > 0",
        });
    }
    if !(0.0..1.0).contains(&cfg.mask_ratio) {
        return Err(ObjectiveError::InvalidConfig {
            key: "mask_ratio",
            value: cfg.mask_ratio.to_string(),
            expected: "a ratio in [0, 1)",
        });
    }
    if tokens.is_empty() {
        return Err(ObjectiveError::EmptySequence {
            what: "text infilling input",
        });
    }
    Ok(())
}

/// Poisson span lengths until they add up to `budget`, the last cut to fit (fairseq draws them
/// `budget` at a time; the same stream of draws).
fn span_lengths(budget: usize, lambda: f64, rng: &mut Rng) -> Vec<usize> {
    let mut lengths = Vec::new();
    let mut covered = 0;
    while covered < budget {
        let l = poisson(lambda, rng).min(budget - covered);
        lengths.push(l);
        covered += l;
    }
    lengths
}

/// Text infilling of `tokens`, each token a word (see [`text_infilling_words`]).
pub fn text_infilling(tokens: &[u32], cfg: &InfillingConfig, rng: &mut Rng) -> Result<Infilled> {
    check_infilling(tokens, cfg)?;
    match cfg.placement {
        SpanPlacement::Exact => Ok(exact_infilling(tokens, cfg, rng)),
        SpanPlacement::Fairseq => Ok(fairseq_infilling(
            tokens,
            &vec![true; tokens.len()],
            cfg,
            rng,
        )),
    }
}

/// Whole-word text infilling as fairseq's `add_whole_word_mask` does it: `word_starts[i]` says
/// whether token `i` begins a word, spans are counted in words and never stop inside one.
/// (`cfg.placement` is taken as [`SpanPlacement::Fairseq`].)
pub fn text_infilling_words(
    tokens: &[u32],
    word_starts: &[bool],
    cfg: &InfillingConfig,
    rng: &mut Rng,
) -> Result<Infilled> {
    check_infilling(tokens, cfg)?;
    if word_starts.len() != tokens.len() {
        return Err(ObjectiveError::InvalidConfig {
            key: "word_starts",
            value: word_starts.len().to_string(),
            expected: "one flag per token",
        });
    }
    Ok(fairseq_infilling(tokens, word_starts, cfg, rng))
}

/// fairseq's procedure: `budget = ceil(ratio · words)`; Poisson lengths summing to the budget
/// (zero-length spans become insertions); each remaining span starts at a distinct random word
/// start, its first token replaced by `[MASK]` and the rest of its words deleted — running over
/// another span's `[MASK]` deletes that one too, merging the spans.
fn fairseq_infilling(
    tokens: &[u32],
    word_starts: &[bool],
    cfg: &InfillingConfig,
    rng: &mut Rng,
) -> Infilled {
    let n = tokens.len();
    let mut starts: Vec<usize> = (0..n).filter(|&i| word_starts[i]).collect();
    let budget = (starts.len() as f64 * cfg.mask_ratio).ceil() as usize;
    let mut lengths = span_lengths(budget, cfg.lambda, rng);
    let inserts = lengths.iter().filter(|&&l| l == 0).count();
    lengths.retain(|&l| l > 0);
    rng.shuffle(&mut starts);
    let mut masked_start = vec![false; n];
    let mut deleted = vec![false; n];
    // Walk each span word by word: `left` counts the words still to delete after its first.
    let mut active: Vec<(usize, i64)> = starts
        .iter()
        .zip(&lengths)
        .map(|(&i, &l)| {
            masked_start[i] = true;
            (i, l as i64 - 1)
        })
        .collect();
    while !active.is_empty() {
        active = active
            .into_iter()
            .filter_map(|(i, left)| {
                // The end of the document acts as a word start no span runs past.
                let next_is_word = i + 1 >= n || word_starts[i + 1];
                let left = left - i64::from(next_is_word) - if i + 1 >= n { 1 << 20 } else { 0 };
                (left >= 0).then(|| {
                    deleted[i + 1] = true;
                    (i + 1, left)
                })
            })
            .collect();
    }
    let mut out = Infilled::default();
    for i in 0..n {
        if deleted[i] {
            if let Some(span) = out
                .spans
                .last_mut()
                .filter(|_| out.input_ids.last() == Some(&cfg.mask))
            {
                span.push(tokens[i]);
            }
            continue;
        }
        if masked_start[i] {
            out.input_ids.push(cfg.mask);
            out.spans.push(vec![tokens[i]]);
        } else {
            out.input_ids.push(tokens[i]);
        }
    }
    insert_masks(out, inserts, cfg.mask, rng)
}

/// fairseq's insertion noise: `count` `[MASK]`s (empty spans) at distinct random positions of
/// the result.
fn insert_masks(ex: Infilled, count: usize, mask: u32, rng: &mut Rng) -> Infilled {
    if count == 0 {
        return ex;
    }
    let total = ex.input_ids.len() + count;
    let mut positions: Vec<usize> = (0..total).collect();
    rng.shuffle(&mut positions);
    let mut is_insert = vec![false; total];
    for &p in &positions[..count] {
        is_insert[p] = true;
    }
    let mut out = Infilled {
        input_ids: Vec::with_capacity(total),
        spans: Vec::with_capacity(ex.spans.len() + count),
    };
    let (mut tokens, mut spans) = (ex.input_ids.into_iter(), ex.spans.into_iter());
    for insert in is_insert {
        if insert {
            out.input_ids.push(mask);
            out.spans.push(vec![]);
        } else if let Some(t) = tokens.next() {
            if t == mask {
                out.spans.push(spans.next().unwrap_or_default());
            }
            out.input_ids.push(t);
        }
    }
    out
}

/// The non-overlapping placement: exactly `round(ratio · n)` tokens masked.
fn exact_infilling(tokens: &[u32], cfg: &InfillingConfig, rng: &mut Rng) -> Infilled {
    let n = tokens.len();
    let budget = (n as f64 * cfg.mask_ratio).round() as usize;
    let mut lengths = span_lengths(budget, cfg.lambda, rng);
    let covered: usize = lengths.iter().sum();
    // Place the spans in random order at random gaps between the n − covered kept tokens:
    // span j goes before kept token g_j (g sorted), so spans never overlap.
    rng.shuffle(&mut lengths);
    let kept = n - covered;
    let mut gaps: Vec<usize> = (0..lengths.len())
        .map(|_| rng.below(kept as u64 + 1) as usize)
        .collect();
    gaps.sort_unstable();
    let mut out = Infilled {
        input_ids: Vec::with_capacity(kept + lengths.len()),
        spans: Vec::with_capacity(lengths.len()),
    };
    let (mut pos, mut kept_seen, mut j) = (0, 0, 0);
    loop {
        while j < lengths.len() && gaps[j] == kept_seen {
            out.input_ids.push(cfg.mask);
            out.spans.push(tokens[pos..pos + lengths[j]].to_vec());
            pos += lengths[j];
            j += 1;
        }
        if pos == n {
            break;
        }
        out.input_ids.push(tokens[pos]);
        pos += 1;
        kept_seen += 1;
    }
    out
}

/// Undoes [`text_infilling`]: each `[MASK]` gets its span back.
pub fn restore_infilled(ex: &Infilled, mask: u32) -> Vec<u32> {
    let mut spans = ex.spans.iter();
    let mut out = Vec::new();
    for &t in &ex.input_ids {
        if t == mask {
            if let Some(s) = spans.next() {
                out.extend_from_slice(s);
                continue;
            }
        }
        out.push(t);
    }
    out
}

/// Sentences in a random order.
pub fn permute_sentences(sentences: &[Vec<u32>], rng: &mut Rng) -> Vec<u32> {
    let mut order: Vec<usize> = (0..sentences.len()).collect();
    rng.shuffle(&mut order);
    order
        .iter()
        .flat_map(|&i| sentences[i].iter().copied())
        .collect()
}

/// Each token dropped independently with probability `p`.
pub fn delete_tokens(tokens: &[u32], p: f64, rng: &mut Rng) -> Result<Vec<u32>> {
    if !(0.0..1.0).contains(&p) {
        return Err(ObjectiveError::InvalidConfig {
            key: "deletion probability",
            value: p.to_string(),
            expected: "a value in [0, 1)",
        });
    }
    Ok(tokens
        .iter()
        .copied()
        .filter(|_| !rng.bernoulli(p))
        .collect())
}

/// The document rotated to start at a uniformly random token.
pub fn rotate_document(tokens: &[u32], rng: &mut Rng) -> Vec<u32> {
    if tokens.is_empty() {
        return vec![];
    }
    let k = rng.below(tokens.len() as u64) as usize;
    tokens[k..].iter().chain(&tokens[..k]).copied().collect()
}

/// Which BART transforms to apply.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct BartNoise {
    /// Shuffle sentences.
    pub permute_sentences: bool,
    /// Rotate the document.
    pub rotate: bool,
    /// Token-deletion probability (0: off).
    pub deletion: f64,
    /// Text infilling (None: off).
    pub infilling: Option<InfillingConfig>,
}

/// A denoising example: the corrupted input and the original as target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DenoisingExample {
    /// The corrupted document.
    pub input_ids: Vec<u32>,
    /// The original document.
    pub target_ids: Vec<u32>,
}

impl BartNoise {
    /// Corrupts a document given as sentences; the target is the sentences concatenated.
    pub fn apply(&self, sentences: &[Vec<u32>], rng: &mut Rng) -> Result<DenoisingExample> {
        let target_ids: Vec<u32> = sentences.iter().flatten().copied().collect();
        if target_ids.is_empty() {
            return Err(ObjectiveError::EmptySequence {
                what: "BART document",
            });
        }
        let mut x = if self.permute_sentences {
            permute_sentences(sentences, rng)
        } else {
            target_ids.clone()
        };
        if self.rotate {
            x = rotate_document(&x, rng);
        }
        if self.deletion > 0.0 {
            x = delete_tokens(&x, self.deletion, rng)?;
        }
        if let Some(cfg) = &self.infilling {
            if !x.is_empty() {
                x = text_infilling(&x, cfg, rng)?.input_ids;
            }
        }
        Ok(DenoisingExample {
            input_ids: x,
            target_ids,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn infilling_masks_the_budget_and_roundtrips() {
        let tokens: Vec<u32> = (10..110).collect();
        let cfg = InfillingConfig {
            mask_ratio: 0.3,
            lambda: 3.0,
            mask: 0,
            placement: SpanPlacement::Exact,
        };
        let ex = text_infilling(&tokens, &cfg, &mut Rng::seed_from_u64(3)).unwrap();
        let masked: usize = ex.spans.iter().map(Vec::len).sum();
        assert_eq!(masked, 30);
        assert_eq!(ex.input_ids.len(), 70 + ex.spans.len());
        assert_eq!(restore_infilled(&ex, 0), tokens);
        assert!(text_infilling(
            &tokens,
            &InfillingConfig { lambda: 0.0, ..cfg },
            &mut Rng::seed_from_u64(0)
        )
        .is_err());
    }
}
