//! What a step trains on: the work (pretraining batches or a fine-tuning task), this rank's
//! share of each global micro-batch, and the batches of the coming steps made ahead on a
//! background thread.

use super::*;

/// What a run trains on.
#[derive(Debug, Clone)]
pub enum Work {
    /// A tokenized corpus through the family's pretraining objective.
    Pretrain(Arc<BatchSource>),
    /// A labelled task.
    Finetune(Arc<FinetuneTask>),
}

impl Work {
    /// Rows `rows` of the global batch of `key` in `split` (`global` examples): a pure
    /// function of (data, seed, split, key, row). Pretraining builds only those rows; a
    /// fine-tuning task draws the whole batch and keeps them.
    pub fn batch(
        &self,
        split: Split,
        key: u64,
        global: usize,
        rows: std::ops::Range<usize>,
        device: &Device,
    ) -> Result<Batch> {
        match self {
            Self::Pretrain(s) => s.batch(split, key, global, rows, device),
            Self::Finetune(t) if rows == (0..global) => t.batch(split, key, global, device),
            Self::Finetune(t) => t.batch(split, key, global, device)?.rows(rows),
        }
    }
}

/// This rank's rows of one global micro-batch.
#[derive(Debug)]
pub struct Share {
    /// The rows' batch.
    pub batch: Batch,
    /// The first row's index in the global batch (dropout masks are keyed by it).
    pub first_row: usize,
    /// Rows of the global batch.
    pub global_rows: usize,
}

/// Batches of one optimizer step, made ahead on a background thread.
pub(super) struct Prefetch {
    rx: Receiver<Result<Vec<Share>>>,
}

/// Shape of a step's batches: micro-batch size (or the ramp that sets it) and micro-batches.
#[derive(Clone)]
pub(super) struct StepShape {
    pub(super) batch: usize,
    pub(super) accum: usize,
    pub(super) ramp: Option<BatchSizeRamp>,
    /// The ramp's sizes are per rank.
    pub(super) ranks: usize,
    /// This rank.
    pub(super) rank: usize,
}

impl StepShape {
    /// This rank's rows of the micro-batches of optimizer step `step`: keys `step·accum + m`,
    /// the global batch size from the ramp at `tokens_seen` (or `batch`).
    pub(super) fn batches(
        &self,
        work: &Work,
        step: u64,
        tokens_seen: u64,
        device: &Device,
    ) -> Result<Vec<Share>> {
        let global = self.ramp.as_ref().map_or(self.batch, |r| {
            r.batch_size(tokens_seen as f64) * self.ranks
        });
        let rows = lm_dist::share(global, self.ranks, self.rank);
        (0..self.accum)
            .map(|m| {
                let key = step * self.accum as u64 + m as u64;
                Ok(Share {
                    batch: work.batch(Split::Train, key, global, rows.clone(), device)?,
                    first_row: rows.start,
                    global_rows: global,
                })
            })
            .collect()
    }
}

impl Share {
    /// The global batch's tokens, as this rank's rows × global rows / rows.
    fn global_tokens_estimate(&self) -> u64 {
        let rows = self.batch.input_ids.dim(0).unwrap_or(1).max(1);
        (self.batch.tokens * self.global_rows / rows) as u64
    }
}

impl Prefetch {
    pub(super) fn spawn(
        work: Work,
        shape: StepShape,
        steps: std::ops::Range<u64>,
        tokens_seen: u64,
        device: Device,
    ) -> Self {
        let (tx, rx) = sync_channel(2);
        std::thread::spawn(move || {
            let mut tokens = tokens_seen;
            for step in steps {
                let batches = shape.batches(&work, step, tokens, &device);
                // Count what the trainer will count (the global batch's tokens), so the ramp
                // sees the same tokens on resume: exact where every row has as many tokens (a
                // causal LM's windows, what a ramp is used with).
                if let Ok(bs) = &batches {
                    tokens += bs.iter().map(Share::global_tokens_estimate).sum::<u64>();
                }
                if tx.send(batches).is_err() {
                    return; // the trainer stopped early
                }
            }
        });
        Self { rx }
    }

    pub(super) fn next(&self) -> Result<Vec<Share>> {
        self.rx.recv().unwrap_or_else(|_| {
            Err(TrainError::Corpus {
                corpus: "batch thread".into(),
                problem: "stopped unexpectedly".into(),
            })
        })
    }
}
