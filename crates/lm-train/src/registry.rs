//! The families the trainer knows, by name: the built-in ones and any a program registers
//! ([`register`]). A config's `model.family` is a [`Family`], a name looked up here.

use std::sync::{LazyLock, RwLock};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::choices::TokenizerKind;
use crate::error::{Result, TrainError};
use crate::families::{bart::BART, bert::BERT, bert::ROBERTA, gpt::GPT, t5::T5_FAMILY};
use crate::family::{FamilySpec, Specials};

/// The registered families, built-in ones first.
static REGISTRY: LazyLock<RwLock<Vec<&'static FamilySpec>>> =
    LazyLock::new(|| RwLock::new(vec![&GPT, &BERT, &ROBERTA, &BART, &T5_FAMILY]));

/// Adds a family; its name must be new.
pub fn register(spec: &'static FamilySpec) -> Result<()> {
    let mut families = REGISTRY.write().unwrap_or_else(|p| p.into_inner());
    if families.iter().any(|f| f.name == spec.name) {
        return Err(TrainError::Config {
            source_name: "registry".into(),
            key: "model.family".into(),
            problem: format!("a family named {:?} is already registered", spec.name),
        });
    }
    families.push(spec);
    Ok(())
}

/// Every registered family.
pub fn families() -> Vec<Family> {
    let families = REGISTRY.read().unwrap_or_else(|p| p.into_inner());
    families.iter().map(|&s| Family(s)).collect()
}

/// A registered family, the value of `model.family`: its [`FamilySpec`] by name.
#[derive(Clone, Copy)]
pub struct Family(&'static FamilySpec);

impl Family {
    /// The family registered as `name`.
    pub fn named(name: &str) -> std::result::Result<Self, String> {
        let all = families();
        all.iter().copied().find(|f| f.name == name).ok_or_else(|| {
            let names: Vec<String> = all.iter().map(|f| format!("`{}`", f.name)).collect();
            format!(
                "unknown variant `{name}`, expected one of {}",
                names.join(", ")
            )
        })
    }

    /// The family whose checkpoints have HuggingFace's `model_type` (the first registered).
    pub fn of_hf_model_type(model_type: &str) -> Option<Self> {
        families()
            .into_iter()
            .find(|f| f.hf_model_type == Some(model_type))
    }

    /// Its special ids in `tok_id`'s vocabulary of `kind` (none for a character vocabulary).
    pub fn specials(
        self,
        tok_id: &dyn Fn(&str) -> Result<u32>,
        kind: TokenizerKind,
    ) -> Result<Specials> {
        if kind == TokenizerKind::Char {
            return Ok(Specials::default());
        }
        let mut s = (self.0.specials)(tok_id)?;
        s.all = (self.0.special_tokens)(kind)
            .iter()
            .map(|t| tok_id(t))
            .collect::<Result<_>>()?;
        Ok(s)
    }
}

impl std::ops::Deref for Family {
    type Target = FamilySpec;
    fn deref(&self) -> &FamilySpec {
        self.0
    }
}

impl PartialEq for Family {
    fn eq(&self, other: &Self) -> bool {
        self.0.name == other.0.name
    }
}

impl Eq for Family {}

impl std::hash::Hash for Family {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.0.name.hash(state)
    }
}

impl std::fmt::Debug for Family {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Family({:?})", self.0.name)
    }
}

impl std::fmt::Display for Family {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0.name)
    }
}

impl std::str::FromStr for Family {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        Self::named(s)
    }
}

impl Serialize for Family {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(self.0.name)
    }
}

impl<'de> Deserialize<'de> for Family {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let name = String::deserialize(d)?;
        Family::named(&name).map_err(serde::de::Error::custom)
    }
}
