//! Next sentence prediction (BERT) and RoBERTa's FULL-SENTENCES packing.
//!
//! NSP builds `x = [CLS] A [SEP] B [SEP]` with segment ids 0 over `[CLS] A [SEP]` and 1 over
//! `B [SEP]` (the chapter's `e_A`/`e_B`). With probability ½, `B` is the text that really follows
//! `A` (IsNext); otherwise it starts at a random sentence of a *different* document (NotNext). As
//! in BERT's `create_instances_from_document`, sentences are gathered into a chunk up to the
//! length budget, and `A` is a random prefix of whole sentences of that chunk; the longer of `A`
//! and `B` is trimmed from its end until the pair fits.

use crate::{ObjectiveError, Result, Rng};

/// A document as a list of sentences, each a list of token ids.
pub type Document = Vec<Vec<u32>>;

/// NSP options.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NspConfig {
    /// Total length including `[CLS]` and two `[SEP]` (BERT: 512, 128 for most of pretraining).
    pub max_len: usize,
    /// Probability that `B` is the true continuation (0.5).
    pub is_next_prob: f64,
    /// `[CLS]` id.
    pub cls: u32,
    /// `[SEP]` id.
    pub sep: u32,
}

/// One NSP example.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NspExample {
    /// `[CLS] A [SEP] B [SEP]`.
    pub input_ids: Vec<u32>,
    /// 0 over `[CLS] A [SEP]`, 1 over `B [SEP]`.
    pub segment_ids: Vec<u32>,
    /// True when `B` follows `A` in the corpus.
    pub is_next: bool,
    /// The document `A` came from.
    pub doc_a: usize,
    /// The document `B` came from.
    pub doc_b: usize,
}

impl NspExample {
    /// The NSP label: 0 = IsNext, 1 = NotNext (HuggingFace's `next_sentence_label`).
    pub fn label(&self) -> u32 {
        u32::from(!self.is_next)
    }
}

fn flat(sentences: &[Vec<u32>]) -> Vec<u32> {
    sentences.iter().flatten().copied().collect()
}

/// Sentence pairs for MLM + NSP from every document, each document walked once.
pub fn next_sentence_pairs(
    docs: &[Document],
    cfg: &NspConfig,
    rng: &mut Rng,
) -> Result<Vec<NspExample>> {
    if cfg.max_len < 5 {
        return Err(ObjectiveError::TooShort {
            what: "NSP max_len",
            len: cfg.max_len,
            min: 5,
        });
    }
    if !(0.0..=1.0).contains(&cfg.is_next_prob) {
        return Err(ObjectiveError::InvalidConfig {
            key: "is_next_prob",
            value: cfg.is_next_prob.to_string(),
            expected: "a probability in [0, 1]",
        });
    }
    let nonempty: Vec<usize> = (0..docs.len())
        .filter(|&d| docs[d].iter().any(|s| !s.is_empty()))
        .collect();
    if nonempty.len() < 2 {
        return Err(ObjectiveError::TooShort {
            what: "NSP corpus (non-empty documents; negatives need another document)",
            len: nonempty.len(),
            min: 2,
        });
    }
    let budget = cfg.max_len - 3;
    let mut out = Vec::new();
    for &d in &nonempty {
        let sents: Vec<&Vec<u32>> = docs[d].iter().filter(|s| !s.is_empty()).collect();
        let mut i = 0;
        while i < sents.len() {
            // Gather a chunk of whole sentences up to the budget (at least one sentence).
            let mut chunk_end = i + 1;
            let mut len = sents[i].len();
            while chunk_end < sents.len() && len + sents[chunk_end].len() <= budget {
                len += sents[chunk_end].len();
                chunk_end += 1;
            }
            let chunk: Vec<Vec<u32>> = sents[i..chunk_end].iter().map(|s| (*s).clone()).collect();
            let a_end = if chunk.len() >= 2 {
                1 + rng.below(chunk.len() as u64 - 1) as usize
            } else {
                1
            };
            let a = flat(&chunk[..a_end]);
            let real_next_available = a_end < chunk.len() || chunk_end < sents.len();
            let is_next = real_next_available && rng.bernoulli(cfg.is_next_prob);
            let (b, doc_b, consumed) = if is_next {
                if a_end < chunk.len() {
                    (flat(&chunk[a_end..]), d, chunk_end)
                } else {
                    (sents[chunk_end].clone(), d, chunk_end + 1)
                }
            } else {
                // A random other document, from a random sentence on.
                let mut other = nonempty[rng.below(nonempty.len() as u64 - 1) as usize];
                if other == d {
                    // The draw skipped the last document: it stands in for `d` (≥ 2 documents).
                    other = nonempty[nonempty.len() - 1];
                }
                let os: Vec<&Vec<u32>> = docs[other].iter().filter(|s| !s.is_empty()).collect();
                let start = rng.below(os.len() as u64) as usize;
                let b: Vec<u32> = os[start..]
                    .iter()
                    .flat_map(|s| s.iter().copied())
                    .take(budget)
                    .collect();
                // The unused part of this chunk goes back to be read again, as BERT does.
                (b, other, i + a_end)
            };
            out.push(pair(cfg, budget, (a, d), (b, doc_b), is_next));
            i = consumed.max(i + 1);
        }
    }
    Ok(out)
}

/// `[CLS] A [SEP] B [SEP]` with its segment ids, the longer of `A` and `B` cut from its end
/// until the pair fits `budget` tokens.
fn pair(
    cfg: &NspConfig,
    budget: usize,
    (mut a, doc_a): (Vec<u32>, usize),
    (mut b, doc_b): (Vec<u32>, usize),
    is_next: bool,
) -> NspExample {
    while a.len() + b.len() > budget {
        if a.len() > b.len() {
            a.pop();
        } else {
            b.pop();
        }
    }
    let mut input_ids = Vec::with_capacity(a.len() + b.len() + 3);
    input_ids.push(cfg.cls);
    input_ids.extend_from_slice(&a);
    input_ids.push(cfg.sep);
    let first = input_ids.len();
    input_ids.extend_from_slice(&b);
    input_ids.push(cfg.sep);
    let mut segment_ids = vec![0u32; first];
    segment_ids.resize(input_ids.len(), 1);
    NspExample {
        input_ids,
        segment_ids,
        is_next,
        doc_a,
        doc_b,
    }
}

/// RoBERTa's FULL-SENTENCES input: sentences packed contiguously across documents (a `[SEP]`
/// between documents) into `<s> … </s>` blocks of at most `max_len` tokens, with no NSP.
pub fn full_sentences(
    docs: &[Document],
    max_len: usize,
    bos: u32,
    eos: u32,
    sep: u32,
) -> Result<Vec<Vec<u32>>> {
    if max_len < 3 {
        return Err(ObjectiveError::TooShort {
            what: "FULL-SENTENCES max_len",
            len: max_len,
            min: 3,
        });
    }
    let budget = max_len - 2;
    let mut blocks = Vec::new();
    let mut cur: Vec<u32> = Vec::new();
    let mut close = |cur: &mut Vec<u32>| {
        if !cur.is_empty() {
            let mut b = Vec::with_capacity(cur.len() + 2);
            b.push(bos);
            b.append(cur);
            b.push(eos);
            blocks.push(b);
        }
    };
    for (di, doc) in docs.iter().enumerate() {
        if di > 0 && !cur.is_empty() {
            if cur.len() + 1 > budget {
                close(&mut cur);
            } else {
                cur.push(sep);
            }
        }
        for s in doc.iter().filter(|s| !s.is_empty()) {
            for piece in s.chunks(budget) {
                if cur.len() + piece.len() > budget {
                    close(&mut cur);
                }
                cur.extend_from_slice(piece);
            }
        }
    }
    close(&mut cur);
    if blocks.is_empty() {
        return Err(ObjectiveError::EmptySequence {
            what: "FULL-SENTENCES corpus",
        });
    }
    Ok(blocks)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pair_layout_matches_the_chapter() {
        // Two documents of two sentences; CLS = 0, SEP = 1.
        let docs = vec![
            vec![vec![10, 11], vec![12, 13]],
            vec![vec![20, 21], vec![22]],
        ];
        let cfg = NspConfig {
            max_len: 16,
            is_next_prob: 1.0,
            cls: 0,
            sep: 1,
        };
        let ex = next_sentence_pairs(&docs, &cfg, &mut Rng::seed_from_u64(0)).unwrap();
        assert_eq!(ex[0].input_ids, vec![0, 10, 11, 1, 12, 13, 1]);
        assert_eq!(ex[0].segment_ids, vec![0, 0, 0, 0, 1, 1, 1]);
        assert!(ex[0].is_next && ex[0].label() == 0);
    }

    #[test]
    fn full_sentences_packs_across_documents() {
        let docs = vec![vec![vec![5, 6], vec![7]], vec![vec![8, 9]]];
        let blocks = full_sentences(&docs, 7, 0, 2, 3).unwrap();
        assert_eq!(blocks, vec![vec![0, 5, 6, 7, 3, 2], vec![0, 8, 9, 2]]);
    }
}
