//! The one error type of this crate.

/// What went wrong while building training examples or computing a loss.
#[derive(Debug, thiserror::Error)]
pub enum ObjectiveError {
    /// A sequence had no tokens where the objective needs some.
    #[error("{what}: the sequence is empty")]
    EmptySequence {
        /// Which input was empty.
        what: &'static str,
    },
    /// A sequence is shorter than the objective needs.
    #[error("{what}: length {len} is too short, the objective needs at least {min} tokens")]
    TooShort {
        /// Which input was too short.
        what: &'static str,
        /// Its length.
        len: usize,
        /// The least length that works.
        min: usize,
    },
    /// A configuration value is outside its domain.
    #[error("invalid {key} = {value}: {expected}")]
    InvalidConfig {
        /// The configuration key.
        key: &'static str,
        /// The value given, printed.
        value: String,
        /// What was expected instead.
        expected: &'static str,
    },
    /// The vocabulary lacks a special token the objective needs.
    #[error("the vocabulary has no {0} token, which this objective needs")]
    MissingSpecialToken(&'static str),
    /// A tensor has the wrong shape or dtype.
    #[error("tensor {name}: expected {expected}, got {got}")]
    BadTensor {
        /// The argument name.
        name: &'static str,
        /// What was expected.
        expected: String,
        /// What was given.
        got: String,
    },
    /// An error from candle while computing a loss.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// This crate's result type.
pub type Result<T> = std::result::Result<T, ObjectiveError>;
