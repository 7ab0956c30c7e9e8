//! `metrics.jsonl`: one JSON object per line, appended as training goes.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{io_err, Result};

/// One line of `metrics.jsonl`. Evaluation lines carry `val_loss`, and their `train_loss` is the
/// evaluation estimate on the training split.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricRecord {
    /// Optimizer steps done.
    pub step: u64,
    /// Learning rate of the last step.
    pub lr: f64,
    /// Training loss.
    pub train_loss: f32,
    /// Training throughput since the previous line.
    pub tokens_per_sec: f64,
    /// Wall-clock seconds of training so far (across resumes).
    pub elapsed_s: f64,
    /// Validation loss, on evaluation lines.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub val_loss: Option<f32>,
    /// Global gradient norm before clipping, on training lines.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grad_norm: Option<f64>,
    /// Model FLOPs utilization against the configured peak, on training lines.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mfu: Option<f64>,
    /// The process's peak resident set so far in MiB, on training lines (Linux).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peak_rss_mib: Option<f64>,
    /// A fine-tuning task's validation metrics on evaluation lines (`val_accuracy`,
    /// `val_token_f1`, …).
    #[serde(flatten)]
    pub metrics: std::collections::BTreeMap<String, f64>,
}

/// Appends records to a run's `metrics.jsonl`.
#[derive(Debug)]
pub struct MetricsLog {
    path: PathBuf,
}

impl MetricsLog {
    /// The log at `path` (created on first append).
    pub fn new(path: &Path) -> Self {
        Self {
            path: path.to_path_buf(),
        }
    }

    /// Appends one line.
    pub fn append(&self, rec: &MetricRecord) -> Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .map_err(io_err(&self.path))?;
        // INVARIANT: a record of numbers and strings always serializes to JSON.
        let line = serde_json::to_string(rec).expect("a record serializes");
        writeln!(f, "{line}").map_err(io_err(&self.path))
    }

    /// All records in the file.
    pub fn read(path: &Path) -> Result<Vec<MetricRecord>> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
            Err(e) => return Err(io_err(path)(e)),
        };
        Ok(text
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect())
    }

    /// Drops the records after `step` (on resume from a checkpoint at `step`, those steps run
    /// again and would otherwise appear twice).
    pub fn truncate_after(&self, step: u64) -> Result<()> {
        let text = match std::fs::read_to_string(&self.path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io_err(&self.path)(e)),
        };
        // The kept lines stay byte for byte as written.
        let kept: String = text
            .lines()
            .filter(|l| serde_json::from_str::<MetricRecord>(l).is_ok_and(|r| r.step <= step))
            .map(|l| format!("{l}\n"))
            .collect();
        if kept.len() == text.len() {
            return Ok(());
        }
        crate::checkpoint::write_atomic(&self.path, kept.as_bytes())
    }

    /// Flushes the log to the disk (at each checkpoint).
    pub fn sync(&self) -> Result<()> {
        match std::fs::File::open(&self.path).and_then(|f| f.sync_all()) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err(&self.path)(e)),
        }
    }
}
