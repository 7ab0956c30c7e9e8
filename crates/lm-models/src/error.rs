//! The one error type of this crate.

use std::path::PathBuf;

/// What went wrong while building, loading or running a model.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// A configuration value is invalid.
    #[error("config {key}: {problem}")]
    BadConfig {
        /// The config key.
        key: &'static str,
        /// What is wrong.
        problem: String,
    },
    /// A checkpoint lacks a tensor the model needs.
    #[error("checkpoint {file}: tensor {name} is missing (expected shape {expected:?})")]
    MissingTensor {
        /// The checkpoint file.
        file: PathBuf,
        /// The tensor's name.
        name: String,
        /// The shape the model expects.
        expected: Vec<usize>,
    },
    /// A checkpoint tensor has the wrong shape.
    #[error("checkpoint {file}: tensor {name} has shape {got:?}, the config expects {expected:?}")]
    ShapeMismatch {
        /// The checkpoint file.
        file: PathBuf,
        /// The tensor's name.
        name: String,
        /// The shape the model expects.
        expected: Vec<usize>,
        /// The shape in the file.
        got: Vec<usize>,
    },
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A file exists but is not what it should be.
    #[error("{path}: {problem}")]
    BadFile {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        problem: String,
    },
    /// An error from candle.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// This crate's result type.
pub type Result<T> = std::result::Result<T, ModelError>;
