//! The errors of reading inputs, preparing and opening datasets: each names the file (and the
//! line, byte offset, field or shard) and what was expected.

use std::path::{Path, PathBuf};

/// An error of lm-data.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The system's error.
        source: std::io::Error,
    },
    /// Text that is not UTF-8.
    #[error(
        "{path}: invalid UTF-8 at byte {offset} (pass --skip-invalid to skip such lines, counted)"
    )]
    InvalidUtf8 {
        /// The file.
        path: PathBuf,
        /// Offset of the first invalid byte in the (decompressed) file.
        offset: u64,
    },
    /// A JSON Lines line that is not a JSON object with the text field as a string.
    #[error("{path}:{line}: {problem}")]
    Json {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: u64,
        /// What is wrong.
        problem: String,
    },
    /// A record without the text field (JSON Lines) or a file without the column (Parquet).
    #[error("{path}{location}: no field {field:?}{hint}")]
    MissingField {
        /// The file.
        path: PathBuf,
        /// `:LINE` for JSON Lines, empty for Parquet.
        location: String,
        /// The field or column asked for.
        field: String,
        /// The fields that are there.
        hint: String,
    },
    /// An input that cannot be used (unknown or unsupported format, nothing matched).
    #[error("{path}: {problem}")]
    Input {
        /// The input as given.
        path: PathBuf,
        /// What is wrong.
        problem: String,
    },
    /// A prepared dataset, shard or token file that is damaged or does not fit.
    #[error("{path}: {problem}")]
    Dataset {
        /// The file or directory.
        path: PathBuf,
        /// What is wrong.
        problem: String,
    },
    /// The tokenizer failed on a text.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// What a document sink returns to end a read early: [`crate::for_each_document`] then
    /// returns `Ok`.
    #[error("the reader was stopped")]
    Stopped,
}

/// lm-data's result.
pub type Result<T> = std::result::Result<T, DataError>;

/// Maps an I/O error to one naming `path`.
pub fn io_err(path: impl AsRef<Path>) -> impl FnOnce(std::io::Error) -> DataError {
    let path = path.as_ref().to_path_buf();
    move |source| DataError::Io { path, source }
}

/// A [`DataError::Dataset`] about `path`.
pub(crate) fn bad(path: impl AsRef<Path>, problem: impl Into<String>) -> DataError {
    DataError::Dataset {
        path: path.as_ref().to_path_buf(),
        problem: problem.into(),
    }
}
