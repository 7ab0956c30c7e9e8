//! Causal language modeling (GPT): maximum likelihood of each token given its prefix,
//! `log p(x) = Σ_i log p(x_{i+1} | x_{1:i})`. The model sees `x_{1:L}` and is scored against
//! `x_{2:L+1}`: inputs and targets are the same tokens shifted by one.

use crate::{ObjectiveError, Result, IGNORE_INDEX};

/// One training example: model inputs and the token each position must predict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CausalExample {
    /// Token ids fed to the model.
    pub input_ids: Vec<u32>,
    /// For each input position, the next token, or [`IGNORE_INDEX`] where nothing is predicted.
    pub targets: Vec<i64>,
}

/// Shifts `tokens` by one: inputs are `tokens[..L-1]`, targets `tokens[1..]`.
///
/// ```
/// let ex = lm_objectives::causal::shift_for_causal_lm(&[5, 6, 7]).unwrap();
/// assert_eq!(ex.input_ids, vec![5, 6]);
/// assert_eq!(ex.targets, vec![6, 7]);
/// ```
pub fn shift_for_causal_lm(tokens: &[u32]) -> Result<CausalExample> {
    if tokens.len() < 2 {
        return Err(ObjectiveError::TooShort {
            what: "causal LM sequence",
            len: tokens.len(),
            min: 2,
        });
    }
    Ok(CausalExample {
        input_ids: tokens[..tokens.len() - 1].to_vec(),
        targets: tokens[1..].iter().map(|&t| t as i64).collect(),
    })
}

/// The window of `block_size` inputs starting at `start` in a token stream, with its targets
/// (nanoGPT's `x = data[i:i+B]`, `y = data[i+1:i+1+B]`), written into the given buffers.
pub fn window_at(
    stream: &[u32],
    start: usize,
    block_size: usize,
    inputs: &mut Vec<u32>,
    targets: &mut Vec<i64>,
) -> Result<()> {
    if block_size == 0 || start + block_size + 1 > stream.len() {
        return Err(ObjectiveError::TooShort {
            what: "token stream for a causal LM window",
            len: stream.len().saturating_sub(start),
            min: block_size + 1,
        });
    }
    inputs.extend_from_slice(&stream[start..start + block_size]);
    targets.extend(
        stream[start + 1..start + block_size + 1]
            .iter()
            .map(|&t| t as i64),
    );
    Ok(())
}

/// Decoder-only prefix LM on a window of `L` tokens: the inputs are `tokens[..L-1]`, whose
/// first `prefix` tokens the model reads with bidirectional attention (its mask's job), and only
/// the continuation is scored — position `i` targets `tokens[i+1]` for `i ≥ prefix − 1`, the
/// prefix positions get [`IGNORE_INDEX`] (they see tokens after their own next one). The loss is
/// `−Σ_{i ≥ p} log p(x_i | x_{<i})` with `x_{<p}` read both ways.
///
/// ```
/// let ex = lm_objectives::causal::prefix_lm_window(&[5, 6, 7, 8], 2).unwrap();
/// assert_eq!(ex.input_ids, vec![5, 6, 7]);
/// assert_eq!(ex.targets, vec![-100, 7, 8]);
/// ```
pub fn prefix_lm_window(tokens: &[u32], prefix: usize) -> Result<CausalExample> {
    let mut ex = shift_for_causal_lm(tokens)?;
    if prefix == 0 || prefix >= tokens.len() {
        return Err(ObjectiveError::InvalidConfig {
            key: "prefix",
            value: prefix.to_string(),
            expected: "a prefix of 1 to L − 1 tokens (at least one token to predict)",
        });
    }
    ex.targets[..prefix - 1].fill(IGNORE_INDEX);
    Ok(ex)
}

/// How [`pack_documents`] handles the tokens left over after the last full block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Remainder {
    /// Drop them (GPT-2/3 style packing: every block is full).
    Drop,
    /// Pad the last block with this token; padded positions get [`IGNORE_INDEX`] targets.
    Pad(u32),
}

/// Packs documents into fixed blocks of `block_size` inputs: documents are joined with `eos`
/// after each one, and the stream is cut into consecutive windows whose targets are the next
/// tokens (consecutive windows share one boundary token, so no target is lost).
pub fn pack_documents<D: AsRef<[u32]>>(
    docs: &[D],
    block_size: usize,
    eos: u32,
    remainder: Remainder,
) -> Result<Vec<CausalExample>> {
    if block_size == 0 {
        return Err(ObjectiveError::InvalidConfig {
            key: "block_size",
            value: "0".into(),
            expected: "a positive block size",
        });
    }
    let total: usize = docs.iter().map(|d| d.as_ref().len() + 1).sum();
    if total < 2 {
        return Err(ObjectiveError::EmptySequence {
            what: "documents to pack",
        });
    }
    let mut stream = Vec::with_capacity(total);
    for d in docs {
        stream.extend_from_slice(d.as_ref());
        stream.push(eos);
    }
    let mut out = Vec::with_capacity(stream.len() / block_size + 1);
    let mut start = 0;
    while start + block_size < stream.len() {
        let mut ex = CausalExample {
            input_ids: Vec::with_capacity(block_size),
            targets: Vec::with_capacity(block_size),
        };
        window_at(
            &stream,
            start,
            block_size,
            &mut ex.input_ids,
            &mut ex.targets,
        )?;
        out.push(ex);
        start += block_size;
    }
    let left = stream.len() - start; // tokens from `start` on, the first of which is an input
    if let (Remainder::Pad(pad), true) = (remainder, left >= 2) {
        let mut input_ids = stream[start..].to_vec();
        let mut targets: Vec<i64> = stream[start + 1..].iter().map(|&t| t as i64).collect();
        input_ids.truncate(left - 1);
        input_ids.resize(block_size, pad);
        targets.resize(block_size, IGNORE_INDEX);
        out.push(CausalExample { input_ids, targets });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    #[test]
    fn prefix_lm_scores_only_the_continuation() {
        let t = [1u32, 2, 3, 4, 5];
        // A one-token prefix scores everything the causal LM scores.
        assert_eq!(
            prefix_lm_window(&t, 1).unwrap(),
            shift_for_causal_lm(&t).unwrap()
        );
        let last = prefix_lm_window(&t, 4).unwrap();
        assert_eq!(last.targets, vec![-100, -100, -100, 5]);
        assert!(prefix_lm_window(&t, 5).is_err() && prefix_lm_window(&t, 0).is_err());
    }

    use super::*;

    #[test]
    fn shift_rejects_short_input() {
        assert!(shift_for_causal_lm(&[1]).is_err());
        assert!(shift_for_causal_lm(&[]).is_err());
    }

    #[test]
    fn packing_joins_with_eos_and_pads_the_tail() {
        let docs = vec![vec![1, 2, 3], vec![4, 5]];
        // Stream: 1 2 3 E 4 5 E (E = 9), block 3.
        let blocks = pack_documents(&docs, 3, 9, Remainder::Pad(0)).unwrap();
        assert_eq!(blocks.len(), 2);
        assert_eq!(blocks[0].input_ids, vec![1, 2, 3]);
        assert_eq!(blocks[0].targets, vec![2, 3, 9]);
        assert_eq!(blocks[1].input_ids, vec![9, 4, 5]);
        assert_eq!(blocks[1].targets, vec![4, 5, 9]);
        // One token left (the final E) is only a target, already used: the tail is empty.
        let dropped = pack_documents(&docs, 3, 9, Remainder::Drop).unwrap();
        assert_eq!(dropped.len(), 2);
        let blocks = pack_documents(&[vec![1, 2, 3, 4]], 3, 9, Remainder::Pad(0)).unwrap();
        // Stream 1 2 3 4 E: block [1 2 3]->[2 3 4], tail [4]->[E] padded.
        assert_eq!(blocks[1].input_ids, vec![4, 0, 0]);
        assert_eq!(blocks[1].targets, vec![9, IGNORE_INDEX, IGNORE_INDEX]);
    }
}
