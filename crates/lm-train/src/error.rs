//! The trainer's error type: every message names the file, key or recipe at fault.

use std::path::PathBuf;

/// What went wrong before or during training.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// A corpus, config or checkpoint file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The corpus cannot feed the configured model.
    #[error("corpus {corpus}: {problem}")]
    Corpus {
        /// The corpus file or built-in name.
        corpus: String,
        /// What is wrong.
        problem: String,
    },
    /// A configuration error, with the key and a hint.
    #[error("config {source_name}: {key}: {problem}")]
    Config {
        /// The config file or recipe.
        source_name: String,
        /// The key at fault.
        key: String,
        /// What is wrong and how to fix it.
        problem: String,
    },
    /// No recipe of that name.
    #[error("unknown recipe {name:?}; available recipes: {available}")]
    UnknownRecipe {
        /// The name asked for.
        name: String,
        /// The names that exist.
        available: String,
    },
    /// A checkpoint or run directory is missing, unreadable or inconsistent.
    #[error("checkpoint {path}: {problem}")]
    Checkpoint {
        /// The checkpoint file or directory.
        path: PathBuf,
        /// What is wrong.
        problem: String,
    },
    /// The loss became NaN or infinite.
    #[error("step {step}: the training loss is {loss}; stopping (lower the learning rate or set on_nonfinite_loss = \"skip\")")]
    NonFiniteLoss {
        /// The step at which it happened.
        step: u64,
        /// The loss value.
        loss: f32,
    },
    /// The weights became NaN or infinite; no checkpoint was written.
    #[error("step {step}: the weights are NaN or infinite, so no checkpoint was written (the last finite one: {last}); lower the learning rate or resume from it")]
    NonFiniteWeights {
        /// The step whose checkpoint was refused.
        step: u64,
        /// The newest checkpoint on disk, or "none".
        last: String,
    },
    /// An input file the user gave (to predict from), with the line.
    #[error("{path}: {problem}")]
    Input {
        /// `file:line`.
        path: String,
        /// What is wrong.
        problem: String,
    },
    /// A stopping step the run cannot take.
    #[error("cannot stop at step {step}: {problem}")]
    StopStep {
        /// The step asked for.
        step: u64,
        /// Why not, and what to do.
        problem: String,
    },
    /// From the model crate.
    #[error(transparent)]
    Model(#[from] lm_models::ModelError),
    /// From the optimizer crate.
    #[error(transparent)]
    Optim(#[from] lm_optim::OptimError),
    /// From the objectives crate.
    #[error(transparent)]
    Objective(#[from] lm_objectives::ObjectiveError),
    /// From candle.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    /// A corpus, dataset or token file (lm-data).
    #[error(transparent)]
    Data(#[from] lm_data::DataError),
    /// A collective between the data-parallel ranks failed.
    #[error("data-parallel ranks: {0}")]
    Dist(#[from] lm_dist::DistError),
}

/// This crate's result type.
pub type Result<T> = std::result::Result<T, TrainError>;

pub(crate) fn io_err(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> TrainError {
    let path = path.into();
    move |source| TrainError::Io { path, source }
}
