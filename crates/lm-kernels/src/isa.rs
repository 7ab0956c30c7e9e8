//! Which instruction sets the CPU kernels may use: what the CPU has, capped by the
//! `LM_KERNELS_MAX_ISA` environment variable — like oneDNN's `ONEDNN_MAX_CPU_ISA` — so that the
//! paths a smaller CPU takes (and `auto`'s choice there) run, are tested and are measured on a
//! bigger one.

/// Instruction-set levels the CPU kernels choose between, lowest first; each includes the ones
/// before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Isa {
    /// No AVX-512 kernels: products through the gemm crate (AVX2 + FMA where present), bf16 as
    /// rounded f32 inputs.
    Generic,
    /// AVX-512 f32 kernels; bf16 as rounded f32 inputs.
    Avx512,
    /// AVX-512 and AVX512-BF16 (`vdpbf16ps`) for bf16 products.
    Avx512Bf16,
    /// AVX-512 and the AMX tile unit (`tdpbf16ps`) for bf16 products: everything.
    Amx,
}

/// The environment variable that caps the instruction set.
pub const MAX_ISA_ENV: &str = "LM_KERNELS_MAX_ISA";

impl Isa {
    /// Every level, lowest first.
    pub const ALL: [Isa; 4] = [Isa::Generic, Isa::Avx512, Isa::Avx512Bf16, Isa::Amx];

    /// The value of `LM_KERNELS_MAX_ISA` that names this level.
    pub fn name(self) -> &'static str {
        match self {
            Isa::Generic => "generic",
            Isa::Avx512 => "avx512",
            Isa::Avx512Bf16 => "avx512-bf16",
            Isa::Amx => "amx",
        }
    }

    /// The level `name` names.
    pub fn parse(name: &str) -> Option<Isa> {
        Isa::ALL.into_iter().find(|isa| isa.name() == name)
    }
}

impl std::fmt::Display for Isa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// `LM_KERNELS_MAX_ISA` holds a value that names no level.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MaxIsaError {
    /// The value found.
    pub value: String,
}

impl std::fmt::Display for MaxIsaError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = Isa::ALL.iter().map(|i| i.name()).collect();
        write!(
            f,
            "{MAX_ISA_ENV}={:?} names no instruction-set level (expected one of: {})",
            self.value,
            names.join(", ")
        )
    }
}

impl std::error::Error for MaxIsaError {}

/// The cap set by `LM_KERNELS_MAX_ISA`: `Ok(None)` when it is unset or empty, an error when it
/// names no level. Binaries call this at start to refuse a misspelt value; the kernels ignore
/// one (they run with no cap).
pub fn max_isa_from_env() -> Result<Option<Isa>, MaxIsaError> {
    match std::env::var(MAX_ISA_ENV) {
        Ok(v) if v.trim().is_empty() => Ok(None),
        Ok(v) => Isa::parse(v.trim())
            .map(Some)
            .ok_or(MaxIsaError { value: v }),
        Err(std::env::VarError::NotPresent) => Ok(None),
        Err(std::env::VarError::NotUnicode(v)) => Err(MaxIsaError {
            value: v.to_string_lossy().into_owned(),
        }),
    }
}

/// The highest level the kernels may use in this process (read once).
pub fn max_isa() -> Isa {
    static CAP: std::sync::OnceLock<Isa> = std::sync::OnceLock::new();
    *CAP.get_or_init(|| max_isa_from_env().ok().flatten().unwrap_or(Isa::Amx))
}

/// Whether the kernels may use `level`'s instructions (the CPU must still have them).
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))] // only x86 kernels ask
pub(crate) fn allows(level: Isa) -> bool {
    max_isa() >= level
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_levels_are_ordered() {
        for isa in Isa::ALL {
            assert_eq!(Isa::parse(isa.name()), Some(isa));
        }
        assert!(Isa::Generic < Isa::Avx512 && Isa::Avx512 < Isa::Avx512Bf16);
        assert!(Isa::Avx512Bf16 < Isa::Amx);
        assert_eq!(Isa::parse("avx512_bf16"), None);
        let e = MaxIsaError {
            value: "avx9".into(),
        };
        assert_eq!(
            e.to_string(),
            "LM_KERNELS_MAX_ISA=\"avx9\" names no instruction-set level (expected one of: \
             generic, avx512, avx512-bf16, amx)"
        );
    }
}
