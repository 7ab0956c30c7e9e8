//! What a forward pass runs under, passed explicitly to every layer: the precision of the
//! matrix products and whether (and from what key) dropout draws its masks. No hidden state: the
//! same model answers training and evaluation calls at once, from any thread.

pub use lm_kernels::precision::MatmulPrecision;

/// Where a forward pass's dropout masks come from: the micro-batch's key and the global number
/// of its first row (a data-parallel rank holding rows `first_row..` of a batch draws the masks
/// one process holding all of it would; see [`crate::layers::Dropout`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DropoutKey {
    /// The micro-batch's key (a trainer derives it from the run's seed and the step).
    pub key: u64,
    /// The global row number of the batch's first row.
    pub first_row: usize,
}

/// The settings of one forward (and its backward): built by the caller and passed down to every
/// layer. [`StepContext::EVAL`] is evaluation and generation at f32 products.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StepContext {
    /// Precision of the matrix products (the fused kernels and, on a GPU, candle's matmul).
    pub precision: MatmulPrecision,
    /// `Some`: training, dropout on, masks drawn from this key; `None`: dropout off.
    pub dropout: Option<DropoutKey>,
}

impl StepContext {
    /// Evaluation at f32 products: no dropout.
    pub const EVAL: Self = Self {
        precision: MatmulPrecision::Highest,
        dropout: None,
    };

    /// Evaluation (no dropout) at `precision`.
    pub fn eval(precision: MatmulPrecision) -> Self {
        Self {
            precision,
            dropout: None,
        }
    }

    /// Training at `precision`, dropout masks drawn from `key` for rows numbered from
    /// `first_row`.
    pub fn train(precision: MatmulPrecision, key: u64, first_row: usize) -> Self {
        Self {
            precision,
            dropout: Some(DropoutKey { key, first_row }),
        }
    }

    /// Whether dropout is on.
    pub fn training(&self) -> bool {
        self.dropout.is_some()
    }
}
