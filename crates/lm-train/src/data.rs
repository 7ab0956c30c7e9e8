//! Corpus loading, the train/val split and random batches of causal-LM windows.

use candle_core::{Device, Tensor};
use lm_objectives::{causal::window_at, Rng};

use crate::error::{io_err, Result, TrainError};

/// The name of the bundled corpus in configs.
pub const BUILTIN_SHAKESPEARE: &str = "builtin:tinyshakespeare";

/// The bundled corpus: tinyshakespeare (1,115,394 bytes), compiled into the binary.
pub const SHAKESPEARE: &str = include_str!("../../../data/tinyshakespeare.txt");

/// Reads a corpus: a UTF-8 text file, or the bundled one by its `builtin:` name.
pub fn load_corpus(spec: &str) -> Result<String> {
    let text = if spec == BUILTIN_SHAKESPEARE {
        SHAKESPEARE.to_string()
    } else if let Some(name) = spec.strip_prefix("builtin:") {
        return Err(TrainError::Corpus {
            corpus: spec.into(),
            problem: format!(
                "no built-in corpus {name:?}; the bundled one is {BUILTIN_SHAKESPEARE}"
            ),
        });
    } else {
        std::fs::read_to_string(spec).map_err(io_err(spec))?
    };
    if text.is_empty() {
        return Err(TrainError::Corpus {
            corpus: spec.into(),
            problem: "the file is empty".into(),
        });
    }
    Ok(text)
}

/// Which part of the corpus.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Split {
    /// The first `1 − val_fraction` of the tokens.
    Train,
    /// The rest.
    Val,
}

/// A token stream split into a training prefix and a validation suffix (nanoGPT's split).
#[derive(Debug, Clone)]
pub struct TokenSplits {
    train: Vec<u32>,
    val: Vec<u32>,
}

impl TokenSplits {
    /// Splits `tokens` at `⌊n·(1 − val_fraction)⌋`; both parts must hold at least one window of
    /// `block_size + 1` tokens.
    pub fn new(
        tokens: Vec<u32>,
        val_fraction: f64,
        block_size: usize,
        corpus: &str,
    ) -> Result<Self> {
        let n = tokens.len();
        let cut = (n as f64 * (1.0 - val_fraction)) as usize;
        let need = block_size + 1;
        if cut < need || n - cut < need {
            return Err(TrainError::Corpus {
                corpus: corpus.into(),
                problem: format!(
                    "{n} tokens is shorter than one block: the train ({cut}) and validation ({}) splits each need at least block_size + 1 = {need}",
                    n - cut
                ),
            });
        }
        let mut train = tokens;
        let val = train.split_off(cut);
        Ok(Self { train, val })
    }

    /// The tokens of a split.
    pub fn tokens(&self, split: Split) -> &[u32] {
        match split {
            Split::Train => &self.train,
            Split::Val => &self.val,
        }
    }

    /// `batch` windows at uniformly random offsets: inputs `[batch, block]` (u32) and targets
    /// `[batch, block]` (i64).
    pub fn batch(
        &self,
        split: Split,
        batch: usize,
        block: usize,
        rng: &mut Rng,
        device: &Device,
    ) -> Result<(Tensor, Tensor)> {
        let stream = self.tokens(split);
        let mut inputs = Vec::with_capacity(batch * block);
        let mut targets = Vec::with_capacity(batch * block);
        let starts = (stream.len() - block) as u64;
        for _ in 0..batch {
            let start = rng.below(starts) as usize;
            window_at(stream, start, block, &mut inputs, &mut targets)?;
        }
        Ok((
            Tensor::from_vec(inputs, (batch, block), device)?,
            Tensor::from_vec(targets, (batch, block), device)?,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_and_batches() {
        let s = TokenSplits::new((0..100).collect(), 0.1, 4, "t").unwrap();
        assert_eq!(s.tokens(Split::Train).len(), 90);
        assert_eq!(s.tokens(Split::Val)[0], 90);
        let (x, y) = s
            .batch(Split::Val, 3, 4, &mut Rng::seed_from_u64(0), &Device::Cpu)
            .unwrap();
        let (x, y) = (x.to_vec2::<u32>().unwrap(), y.to_vec2::<i64>().unwrap());
        for (xs, ys) in x.iter().zip(&y) {
            assert!(xs[0] >= 90);
            for (a, b) in xs.iter().zip(ys) {
                assert_eq!(*a as i64 + 1, *b);
            }
        }
        assert!(TokenSplits::new((0..50).collect(), 0.1, 4, "t").is_ok());
        let e = TokenSplits::new((0..20).collect(), 0.1, 4, "tiny.txt").unwrap_err();
        assert!(
            e.to_string().contains("tiny.txt") && e.to_string().contains("shorter than one block"),
            "{e}"
        );
    }
}
