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

/// Which transformer blocks keep their activations for the backward pass and which recompute
/// them there (activation checkpointing): memory for one block's activations at a time instead
/// of every block's, for about one more forward pass of compute.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Recompute {
    /// Every block keeps its activations.
    #[default]
    Nothing,
    /// Blocks `0, n, 2n, …` of each stack recompute theirs (`n = 1`: every block).
    EveryNthBlock(usize),
}

impl Recompute {
    /// Whether block `i` of a stack recomputes its activations.
    pub fn block(self, i: usize) -> bool {
        match self {
            Self::Nothing => false,
            Self::EveryNthBlock(n) => n > 0 && i.is_multiple_of(n),
        }
    }
}

/// The settings of one forward (and its backward): built by the caller and passed down to every
/// layer. [`StepContext::EVAL`] is evaluation and generation at f32 products.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StepContext {
    /// Precision of the matrix products (the fused kernels and, on a GPU, candle's matmul).
    pub precision: MatmulPrecision,
    /// `Some`: training, dropout on, masks drawn from this key; `None`: dropout off.
    pub dropout: Option<DropoutKey>,
    /// Which blocks recompute their activations in backward (training only).
    pub recompute: Recompute,
}

impl StepContext {
    /// Evaluation at f32 products: no dropout.
    pub const EVAL: Self = Self {
        precision: MatmulPrecision::Highest,
        dropout: None,
        recompute: Recompute::Nothing,
    };

    /// Evaluation (no dropout) at `precision`.
    pub fn eval(precision: MatmulPrecision) -> Self {
        Self {
            precision,
            ..Self::EVAL
        }
    }

    /// Training at `precision`, dropout masks drawn from `key` for rows numbered from
    /// `first_row`, every block's activations kept.
    pub fn train(precision: MatmulPrecision, key: u64, first_row: usize) -> Self {
        Self {
            precision,
            dropout: Some(DropoutKey { key, first_row }),
            recompute: Recompute::Nothing,
        }
    }

    /// This context with `recompute` deciding which blocks recompute their activations.
    pub fn with_recompute(self, recompute: Recompute) -> Self {
        Self { recompute, ..self }
    }

    /// Whether dropout is on.
    pub fn training(&self) -> bool {
        self.dropout.is_some()
    }
}
