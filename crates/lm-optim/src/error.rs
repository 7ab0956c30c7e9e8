//! The one error type of this crate.

/// What went wrong while configuring or running an optimizer.
#[derive(Debug, thiserror::Error)]
pub enum OptimError {
    /// A hyperparameter is outside its domain; refused at construction.
    #[error("invalid {key} = {value}: expected {expected}")]
    InvalidConfig {
        /// The hyperparameter's name.
        key: &'static str,
        /// The value given, printed.
        value: String,
        /// Its domain.
        expected: &'static str,
    },
    /// Saved optimizer state does not match the parameters it is loaded into.
    #[error("optimizer state {key}: {problem}")]
    BadState {
        /// The state tensor's name.
        key: String,
        /// What is wrong with it.
        problem: String,
    },
    /// An operation this optimizer does not implement.
    #[error("this optimizer does not support {0}")]
    Unsupported(&'static str),
    /// A parameter group name that was not declared.
    #[error("unknown parameter group {0:?}")]
    UnknownGroup(String),
    /// An error from candle.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// This crate's result type.
pub type Result<T> = std::result::Result<T, OptimError>;

pub(crate) fn check(ok: bool, key: &'static str, value: f64, expected: &'static str) -> Result<()> {
    if ok {
        Ok(())
    } else {
        Err(OptimError::InvalidConfig {
            key,
            value: value.to_string(),
            expected,
        })
    }
}
