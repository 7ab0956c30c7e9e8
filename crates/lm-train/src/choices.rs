//! The closed sets a configuration chooses from (family, tokenizer, optimizer, schedule, …), as
//! enums parsed once: an unknown value is refused when the TOML is read, with the allowed values.

use serde::{Deserialize, Serialize};

/// Declares a closed set of configuration values: a serde enum whose TOML spelling is given per
/// variant, with `as_str`, `ALL` (the allowed spellings, for messages and docs) and `Display`.
macro_rules! config_enum {
    ($(#[$m:meta])* $name:ident { $($(#[$vm:meta])* $variant:ident = $text:literal,)+ }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        pub enum $name {
            $($(#[$vm])* #[serde(rename = $text)] $variant,)+
        }

        impl $name {
            /// Every allowed value, as spelled in TOML.
            pub const ALL: &'static [&'static str] = &[$($text),+];

            /// The value as spelled in TOML.
            pub fn as_str(self) -> &'static str {
                match self {
                    $(Self::$variant => $text,)+
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl std::str::FromStr for $name {
            type Err = String;
            fn from_str(s: &str) -> std::result::Result<Self, String> {
                match s {
                    $($text => Ok(Self::$variant),)+
                    other => Err(format!(
                        "{other:?} is not one of {}",
                        Self::ALL.iter().map(|v| format!("{v:?}")).collect::<Vec<_>>().join(", ")
                    )),
                }
            }
        }
    };
}

config_enum! {
    /// `objective.kind`: the pretraining objective, apart from the family it trains (each family
    /// has a default and a list of those it fits, in its `FamilySpec`).
    ObjectiveKind {
        /// Next-token prediction over the whole window (GPT).
        CausalLm = "causal-lm",
        /// Masked LM, 80/10/10 (BERT with next sentence prediction, RoBERTa dynamic on
        /// FULL-SENTENCES).
        MaskedLm = "masked-lm",
        /// T5's span corruption with sentinels.
        SpanCorruption = "span-corruption",
        /// BART's text infilling and sentence permutation.
        Denoising = "denoising",
        /// Prefix LM: a random prefix is read in full (T5 and BART's encoder, or GPT's
        /// bidirectional prefix attention) and the rest predicted.
        PrefixLm = "prefix-lm",
    }
}

config_enum! {
    /// `model.t5_feed_forward`: T5's feed-forward block.
    T5FeedForward {
        /// `W_o · relu(W_i x)` (T5 v1.0), embeddings tied to the output.
        Relu = "relu",
        /// `W_o · (gelu(W_0 x) ⊙ W_1 x)` (T5 v1.1), untied output.
        GatedGelu = "gated-gelu",
    }
}

config_enum! {
    /// `objective.mlm_selection`: how MLM picks the positions to corrupt.
    MlmSelection {
        /// Exactly `max(1, round(rate · L))` positions.
        Exact = "exact",
        /// Each position independently with probability `rate`.
        Bernoulli = "bernoulli",
    }
}

config_enum! {
    /// `objective.infilling`: how BART's text infilling places its spans.
    Infilling {
        /// fairseq's placement: random starts, overlapping spans merge (~26.8% masked of 30%).
        Fairseq = "fairseq",
        /// Non-overlapping spans covering exactly `mask_ratio` of the tokens.
        Exact = "exact",
    }
}

config_enum! {
    /// `optim.name`: the update rule.
    OptimizerKind {
        /// Minibatch SGD (with `momentum`).
        Sgd = "sgd",
        /// Adam with L2 weight decay added to the gradient.
        Adam = "adam",
        /// Adam with decoupled weight decay.
        Adamw = "adamw",
        /// AdaFactor (factored second moments).
        Adafactor = "adafactor",
    }
}

config_enum! {
    /// `optim.preset`: a paper's optimization recipe (lm-optim's `presets`) whose values fill
    /// the `[optim]` keys a config leaves out; the keys it gives override them.
    PaperPreset {
        /// GPT-3: AdamW β = (0.9, 0.95), ε = 1e−8, λ = 0.1, clipping at 1, warmup over 375 M
        /// tokens then cosine to 10% of `lr` at 260 B tokens.
        Gpt3 = "gpt3",
        /// BERT: AdamW β = (0.9, 0.999), ε = 1e−6, λ = 0.01, clipping at 1, 10⁴ warmup steps then
        /// linear decay to 0 at 10⁶.
        Bert = "bert",
        /// T5: AdaFactor scaled by the parameter's RMS, no weight decay or clipping, the inverse
        /// square root after 10⁴ steps.
        T5 = "t5",
    }
}

config_enum! {
    /// `optim.schedule`: the learning rate after the linear warmup.
    ScheduleKind {
        /// Cosine decay to `min_lr` at `lr_decay_iters` (or `decay_tokens`).
        Cosine = "cosine",
        /// Linear decay to 0 at `lr_decay_iters` (or `decay_tokens`).
        Linear = "linear",
        /// `lr · √(warmup / max(t, warmup))`.
        InverseSqrt = "inverse_sqrt",
        /// `lr` after warmup.
        Constant = "constant",
    }
}

config_enum! {
    /// `optim.schedule_unit`: what the schedule counts.
    ScheduleUnit {
        /// Optimizer steps.
        Steps = "steps",
        /// Training tokens seen (GPT-3).
        Tokens = "tokens",
    }
}

config_enum! {
    /// `train.on_nonfinite_loss`: what a NaN or infinite loss does. Its step's update is
    /// skipped on the device either way; the host learns of it at the next logged step.
    NonFinitePolicy {
        /// Stop the run with an error there, naming the first such step.
        Stop = "stop",
        /// Report the skipped steps there and go on.
        Skip = "skip",
    }
}

config_enum! {
    /// `train.matmul_precision`: precision of the matrix products.
    Precision {
        /// The fastest this CPU trains at: bf16 with AMX or with a `vdpbf16ps` at twice the f32
        /// FMA rate (AMD Zen 4/5), f32 otherwise.
        Auto = "auto",
        /// f32 products.
        Highest = "highest",
        /// bf16 inputs, f32 accumulation; f32 master weights, activations and gradients.
        Bf16 = "bf16",
        /// f16 inputs, f32 accumulation, with dynamic loss scaling; f32 master weights.
        F16 = "f16",
    }
}

config_enum! {
    /// `finetune.task`: the downstream task.
    TaskKind {
        /// Generated next-line pairs from the corpus (classification of text pairs).
        Pairs = "pairs",
        /// Generated table-to-text examples (generation).
        TableToText = "table-to-text",
        /// `train_file`, `val_file` and `test_file` in JSONL.
        Jsonl = "jsonl",
    }
}

config_enum! {
    /// `finetune.freeze`: which pretrained weights stay fixed.
    Freeze {
        /// Train everything.
        None = "none",
        /// Freeze the embeddings.
        Embeddings = "embeddings",
        /// Freeze the encoder (and embeddings): only the decoder or head trains.
        Encoder = "encoder",
    }
}

config_enum! {
    /// `data.tokenizer`: which tokenizer a run trains.
    TokenizerKind {
        /// One id per character.
        Char = "char",
        /// Byte-level BPE (GPT-2, RoBERTa, BART).
        Bpe = "bpe",
        /// WordPiece with BERT's normalizer (BERT).
        Wordpiece = "wordpiece",
        /// Unigram with a metaspace pre-tokenizer (T5's SentencePiece).
        Unigram = "unigram",
    }
}

impl Precision {
    /// The precision the products run at on this machine (`auto` resolved).
    pub fn resolve(self) -> lm_kernels::precision::MatmulPrecision {
        use lm_kernels::cpu_kernels::fastest_training_precision;
        use lm_kernels::precision::MatmulPrecision;
        match self {
            Self::Auto => fastest_training_precision(),
            Self::Highest => MatmulPrecision::Highest,
            Self::Bf16 => MatmulPrecision::Bf16,
            Self::F16 => MatmulPrecision::F16,
        }
    }

    /// The precision on `device`: on a GPU `auto` is bf16 (cuBLAS's bf16 gemm on tensor cores,
    /// f32 accumulation and f32 masters); on the CPU, [`Self::resolve`].
    pub fn resolve_on(
        self,
        device: &candle_core::Device,
    ) -> lm_kernels::precision::MatmulPrecision {
        use lm_kernels::precision::MatmulPrecision;
        match (self, device.is_cuda()) {
            (Self::Auto, true) => MatmulPrecision::Bf16,
            _ => self.resolve(),
        }
    }

    /// One line on what this precision means on `device`: see [`Self::describe`] for the CPU.
    pub fn describe_on(self, device: &candle_core::Device) -> String {
        if device.is_cuda() {
            match self.resolve_on(device) {
                lm_kernels::precision::MatmulPrecision::Bf16 => {
                    "matmul precision: bf16 products (cuBLAS, f32 accumulation), f32 master weights"
                        .into()
                }
                lm_kernels::precision::MatmulPrecision::F16 => {
                    "matmul precision: f16 products (cuBLAS, f32 accumulation), dynamic loss \
                     scaling, f32 master weights"
                        .into()
                }
                _ => "matmul precision: f32 (cuBLAS)".into(),
            }
        } else {
            let cap = lm_kernels::isa::max_isa();
            if cap < lm_kernels::isa::Isa::Amx {
                let env = lm_kernels::isa::MAX_ISA_ENV;
                format!("{} (CPU kernels capped at {cap} by {env})", self.describe())
            } else {
                self.describe()
            }
        }
    }

    /// One line on what this precision means on this machine: what `auto` chose, or that an
    /// explicit `bf16` is slower here and why.
    pub fn describe(self) -> String {
        use lm_kernels::cpu_kernels::bf16_matmul_kernel;
        use lm_kernels::precision::MatmulPrecision;
        let kernel = bf16_matmul_kernel();
        let bf16_faster = Self::Auto.resolve() == MatmulPrecision::Bf16;
        match (self, self.resolve()) {
            (Self::Auto, MatmulPrecision::Bf16) => {
                format!("matmul precision: auto → bf16 products ({kernel}), f32 master weights")
            }
            (Self::Auto, _) => format!(
                "matmul precision: auto → f32 (no AMX here; bf16 would run as {kernel}, slower than f32)"
            ),
            (Self::Bf16, _) if !bf16_faster => format!(
                "matmul precision: bf16 runs as {kernel} on this CPU (no AMX), slower than f32: measured 1.4–2× the f32 step time on such CPUs; \"auto\" or \"highest\" is faster here"
            ),
            (Self::F16, _) => "matmul precision: f16 products (inputs rounded to f16, f32 \
                 sums on the f32 kernel: no CPU measured here multiplies f16 into f32 sums faster), \
                 dynamic loss scaling, f32 master weights; slower than f32 on this CPU"
                .into(),
            (p, _) => format!("matmul precision: {p}"),
        }
    }
}

impl From<ScheduleUnit> for lm_optim::presets::ScheduleUnit {
    fn from(u: ScheduleUnit) -> Self {
        match u {
            ScheduleUnit::Steps => Self::Steps,
            ScheduleUnit::Tokens => Self::Tokens,
        }
    }
}

impl From<MlmSelection> for lm_objectives::mlm::Selection {
    fn from(s: MlmSelection) -> Self {
        match s {
            MlmSelection::Exact => Self::ExactCount,
            MlmSelection::Bernoulli => Self::Bernoulli,
        }
    }
}

impl From<Infilling> for lm_objectives::bart::SpanPlacement {
    fn from(i: Infilling) -> Self {
        match i {
            Infilling::Fairseq => Self::Fairseq,
            Infilling::Exact => Self::Exact,
        }
    }
}

/// `train.activation_checkpointing`: which blocks recompute their activations in the backward
/// pass instead of keeping them — `"none"`, `"blocks"` (every block) or `N` (blocks 0, N, 2N, …
/// of each stack).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(try_from = "CheckpointingRepr", into = "CheckpointingRepr")]
pub enum ActivationCheckpointing {
    /// Every block keeps its activations.
    #[default]
    None,
    /// Every block recomputes.
    Blocks,
    /// Every N-th block recomputes (N ≥ 1; 1 is `Blocks`).
    EveryNth(usize),
}

/// The TOML spelling of [`ActivationCheckpointing`]: a name or a count.
#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum CheckpointingRepr {
    Name(String),
    Every(i64),
}

impl TryFrom<CheckpointingRepr> for ActivationCheckpointing {
    type Error = String;
    fn try_from(r: CheckpointingRepr) -> Result<Self, String> {
        match r {
            CheckpointingRepr::Name(n) if n == "none" => Ok(Self::None),
            CheckpointingRepr::Name(n) if n == "blocks" => Ok(Self::Blocks),
            CheckpointingRepr::Every(n) if n >= 1 => Ok(Self::EveryNth(n as usize)),
            CheckpointingRepr::Name(n) => Err(format!(
                "{n:?} is not \"none\", \"blocks\" or a positive integer"
            )),
            CheckpointingRepr::Every(n) => Err(format!(
                "{n} is not \"none\", \"blocks\" or a positive integer"
            )),
        }
    }
}

impl From<ActivationCheckpointing> for CheckpointingRepr {
    fn from(c: ActivationCheckpointing) -> Self {
        match c {
            ActivationCheckpointing::None => Self::Name("none".into()),
            ActivationCheckpointing::Blocks => Self::Name("blocks".into()),
            ActivationCheckpointing::EveryNth(n) => Self::Every(n as i64),
        }
    }
}

impl From<ActivationCheckpointing> for lm_models::Recompute {
    fn from(c: ActivationCheckpointing) -> Self {
        match c {
            ActivationCheckpointing::None => Self::Nothing,
            ActivationCheckpointing::Blocks => Self::EveryNthBlock(1),
            ActivationCheckpointing::EveryNth(n) => Self::EveryNthBlock(n),
        }
    }
}

/// `train.zero_stage`: what data-parallel ranks shard (ZeRO's stages).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
#[serde(try_from = "i64", into = "i64")]
pub enum ZeroStage {
    /// 0: every rank keeps all the gradients and optimizer state (DDP).
    #[default]
    Zero0,
    /// 1: each rank keeps the optimizer state of its share of the parameters.
    Zero1,
    /// 2: and only its share of the reduced gradients.
    Zero2,
    /// 3: and, between uses, only its share of the parameters.
    Zero3,
}

impl TryFrom<i64> for ZeroStage {
    type Error = String;
    fn try_from(n: i64) -> Result<Self, String> {
        match n {
            0 => Ok(Self::Zero0),
            1 => Ok(Self::Zero1),
            2 => Ok(Self::Zero2),
            3 => Ok(Self::Zero3),
            n => Err(format!("{n} is not a ZeRO stage: 0, 1, 2 or 3")),
        }
    }
}

impl From<ZeroStage> for i64 {
    fn from(z: ZeroStage) -> Self {
        z as i64
    }
}

impl From<ZeroStage> for lm_dist::ZeroStage {
    fn from(z: ZeroStage) -> Self {
        match z {
            ZeroStage::Zero0 => Self::Replicated,
            ZeroStage::Zero1 => Self::OptimizerState,
            ZeroStage::Zero2 => Self::Gradients,
            ZeroStage::Zero3 => Self::Parameters,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lm_kernels::cpu_kernels::{bf16_matmul_kernel, Bf16Kernel};
    use lm_kernels::precision::MatmulPrecision;

    #[test]
    fn auto_takes_bf16_exactly_where_amx_or_a_fast_bf16_dot_runs_it() {
        let fast = bf16_matmul_kernel() == Bf16Kernel::Amx
            || lm_kernels::cpu_kernels::bf16_dot_outpaces_f32();
        let want = if fast {
            MatmulPrecision::Bf16
        } else {
            MatmulPrecision::Highest
        };
        assert_eq!(Precision::Auto.resolve(), want);
        assert_eq!(Precision::Highest.resolve(), MatmulPrecision::Highest);
        assert_eq!(Precision::Bf16.resolve(), MatmulPrecision::Bf16);
        assert_eq!(Precision::F16.resolve(), MatmulPrecision::F16);
        assert!(Precision::F16.describe().contains("dynamic loss scaling"));
        let said = Precision::Auto.describe();
        assert!(
            said.contains(if fast {
                "auto → bf16"
            } else {
                "auto → f32"
            }),
            "{said}"
        );
        // An explicit bf16 where it is not the faster says it is slower here.
        assert_eq!(Precision::Bf16.describe().contains("slower"), !fast);
    }
}
