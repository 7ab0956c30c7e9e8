//! `metrics.jsonl`: one JSON object per line, appended as training goes.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{io_err, Result, TrainError};

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

    /// All records in the file. A last line that does not parse (a write cut off by a crash) is
    /// dropped with a warning on stderr; any other line that does not parse is damage, an error
    /// naming the file and the line.
    pub fn read(path: &Path) -> Result<Vec<MetricRecord>> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
            Err(e) => return Err(io_err(path)(e)),
        };
        let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
        let mut records = Vec::with_capacity(lines.len());
        for (i, line) in lines.iter().enumerate() {
            match serde_json::from_str(line) {
                Ok(r) => records.push(r),
                Err(e) if i + 1 == lines.len() => {
                    let _ = writeln!(
                        std::io::stderr(),
                        "warning: {}: its last line is not a whole record ({e}); it is left out",
                        path.display()
                    );
                }
                Err(e) => {
                    return Err(TrainError::Checkpoint {
                        path: path.into(),
                        problem: format!("line {}: not a metrics record: {e}", i + 1),
                    })
                }
            }
        }
        Ok(records)
    }

    /// Drops the records after `step` (on resume from a checkpoint at `step`, those steps run
    /// again and would otherwise appear twice).
    pub fn truncate_after(&self, step: u64) -> Result<()> {
        let text = match std::fs::read_to_string(&self.path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io_err(&self.path)(e)),
        };
        let cut = text
            .lines()
            .filter(|l| !l.trim().is_empty())
            .filter(|l| serde_json::from_str::<MetricRecord>(l).is_err())
            .count();
        if cut > 0 {
            let _ = writeln!(
                std::io::stderr(),
                "warning: {}: {cut} line(s) that are not whole records (a write cut off) are dropped",
                self.path.display()
            );
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn record(step: u64) -> MetricRecord {
        MetricRecord {
            step,
            lr: 1e-3,
            train_loss: 2.5,
            tokens_per_sec: 10.0,
            elapsed_s: 1.0,
            val_loss: None,
            grad_norm: Some(1.0),
            mfu: None,
            peak_rss_mib: None,
            metrics: std::collections::BTreeMap::new(),
        }
    }

    #[test]
    fn a_cut_last_line_is_left_out_and_a_damaged_one_is_an_error() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("metrics.jsonl");
        let log = MetricsLog::new(&path);
        for s in [1, 2, 3] {
            log.append(&record(s)).unwrap();
        }
        let whole = std::fs::read_to_string(&path).unwrap();
        // Cut in the middle of the third line, as a crash mid-write leaves it.
        std::fs::write(&path, &whole[..whole.len() - 20]).unwrap();
        let steps: Vec<u64> = MetricsLog::read(&path)
            .unwrap()
            .iter()
            .map(|r| r.step)
            .collect();
        assert_eq!(steps, vec![1, 2]);
        // The second line damaged: an error naming the file and the line.
        let damaged = whole.replacen("\"step\":2", "\"stp\":2,", 1);
        std::fs::write(&path, damaged).unwrap();
        let e = MetricsLog::read(&path).unwrap_err().to_string();
        assert!(e.contains("metrics.jsonl") && e.contains("line 2"), "{e}");
    }
}
