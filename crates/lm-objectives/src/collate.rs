//! Collation: variable-length examples into rectangular batches.

use crate::{ObjectiveError, Result, IGNORE_INDEX};

/// A padded batch, row-major `[batch, len]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PaddedBatch {
    /// Token ids, padded with the pad id.
    pub input_ids: Vec<u32>,
    /// 1 for real tokens, 0 for padding.
    pub attention_mask: Vec<u32>,
    /// Rows.
    pub batch: usize,
    /// Columns.
    pub len: usize,
}

fn padded_len(max: usize, multiple_of: Option<usize>) -> usize {
    match multiple_of {
        Some(m) if m > 1 => max.div_ceil(m) * m,
        _ => max,
    }
}

/// Pads `seqs` on the right to the longest (rounded up to a multiple of `multiple_of`).
pub fn pad_batch<S: AsRef<[u32]>>(
    seqs: &[S],
    pad: u32,
    multiple_of: Option<usize>,
) -> Result<PaddedBatch> {
    if seqs.is_empty() {
        return Err(ObjectiveError::EmptySequence {
            what: "batch to pad",
        });
    }
    let len = padded_len(
        seqs.iter().map(|s| s.as_ref().len()).max().unwrap_or(0),
        multiple_of,
    );
    let mut input_ids = Vec::with_capacity(seqs.len() * len);
    let mut attention_mask = Vec::with_capacity(seqs.len() * len);
    for s in seqs {
        let s = s.as_ref();
        input_ids.extend_from_slice(s);
        input_ids.resize(input_ids.len() + len - s.len(), pad);
        attention_mask.extend(std::iter::repeat_n(1, s.len()));
        attention_mask.extend(std::iter::repeat_n(0, len - s.len()));
    }
    Ok(PaddedBatch {
        input_ids,
        attention_mask,
        batch: seqs.len(),
        len,
    })
}

/// Pads label rows with the ignore index to `len` columns.
pub fn pad_labels<S: AsRef<[i64]>>(labels: &[S], len: usize) -> Result<Vec<i64>> {
    let mut out = Vec::with_capacity(labels.len() * len);
    for l in labels {
        let l = l.as_ref();
        if l.len() > len {
            return Err(ObjectiveError::TooShort {
                what: "label padding length",
                len,
                min: l.len(),
            });
        }
        out.extend_from_slice(l);
        out.resize(out.len() + len - l.len(), IGNORE_INDEX);
    }
    Ok(out)
}

/// Decoder inputs for an encoder-decoder model (HuggingFace's `shift_tokens_right`): each row of
/// `labels` (`[batch, len]`) shifted right by one after `decoder_start`, ignore indices → `pad`.
pub fn shift_right(labels: &[i64], len: usize, decoder_start: u32, pad: u32) -> Result<Vec<u32>> {
    if len == 0 || !labels.len().is_multiple_of(len) {
        return Err(ObjectiveError::BadTensor {
            name: "labels",
            expected: format!("rows of {len}"),
            got: format!("{} values", labels.len()),
        });
    }
    let mut out = Vec::with_capacity(labels.len());
    for row in labels.chunks_exact(len) {
        out.push(decoder_start);
        out.extend(
            row[..len - 1]
                .iter()
                .map(|&t| if t < 0 { pad } else { t as u32 }),
        );
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pads_masks_and_shifts() {
        let b = pad_batch(&[vec![5, 6, 7], vec![8]], 0, Some(4)).unwrap();
        assert_eq!(b.len, 4);
        assert_eq!(b.input_ids, vec![5, 6, 7, 0, 8, 0, 0, 0]);
        assert_eq!(b.attention_mask, vec![1, 1, 1, 0, 1, 0, 0, 0]);
        let labels = pad_labels(&[vec![5i64, 6], vec![7]], 3).unwrap();
        assert_eq!(labels, vec![5, 6, -100, 7, -100, -100]);
        assert_eq!(
            shift_right(&labels, 3, 2, 0).unwrap(),
            vec![2, 5, 6, 2, 7, 0]
        );
    }
}
