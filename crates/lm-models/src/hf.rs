//! HuggingFace checkpoint directories: `config.json` + `model.safetensors`, read and written with
//! transformers' names so that `from_pretrained` and `save_pretrained` interoperate. No network:
//! a checkpoint is always a local directory.

use std::path::Path;

use serde::de::DeserializeOwned;

use crate::error::{ModelError, Result};
use crate::params::ParamStore;

/// Reads `config.json` of `dir`, checks its `model_type` is one of `expected`, and parses it.
pub fn read_config<C: DeserializeOwned>(dir: &Path, expected: &[&str]) -> Result<C> {
    let path = dir.join("config.json");
    let text = std::fs::read_to_string(&path).map_err(|source| ModelError::Io {
        path: path.clone(),
        source,
    })?;
    let json: serde_json::Value = serde_json::from_str(&text).map_err(|e| ModelError::BadFile {
        path: path.clone(),
        problem: format!("not JSON: {e}"),
    })?;
    let model_type = json
        .get("model_type")
        .and_then(|v| v.as_str())
        .unwrap_or("(none)");
    if !expected.contains(&model_type) {
        return Err(ModelError::BadFile {
            path,
            problem: format!(
                "unknown architecture: model_type {model_type:?}, expected {}",
                expected.join(" or ")
            ),
        });
    }
    serde_json::from_value(json).map_err(|e| ModelError::BadFile {
        path,
        problem: format!("bad config: {e}"),
    })
}

/// The `model_type` of a checkpoint directory.
pub fn model_type(dir: &Path) -> Result<String> {
    let path = dir.join("config.json");
    let text = std::fs::read_to_string(&path).map_err(|source| ModelError::Io {
        path: path.clone(),
        source,
    })?;
    let json: serde_json::Value = serde_json::from_str(&text).map_err(|e| ModelError::BadFile {
        path: path.clone(),
        problem: format!("not JSON: {e}"),
    })?;
    json.get("model_type")
        .and_then(|v| v.as_str())
        .map(str::to_string)
        .ok_or_else(|| ModelError::BadFile {
            path,
            problem: "no model_type".into(),
        })
}

/// A store for the model of `dir`'s `config.json`, limited to one scalar per byte of its
/// `model.safetensors` (a stored scalar takes at least two; the slack is for parameters a
/// checkpoint may leave out): a configuration that declares a larger model than its weights is
/// refused as it is built, before it allocates.
pub fn store_for(dir: &Path, seed: u64) -> Result<ParamStore> {
    let path = dir.join("model.safetensors");
    let len = std::fs::metadata(&path)
        .map_err(|source| ModelError::Io {
            path: path.clone(),
            source,
        })?
        .len();
    Ok(ParamStore::with_element_limit(
        seed,
        usize::try_from(len).unwrap_or(usize::MAX),
        &path,
    ))
}

/// Loads `dir/model.safetensors` into `store`, checking every parameter's presence and shape.
pub fn load_weights(store: &ParamStore, dir: &Path) -> Result<()> {
    store.load_safetensors(&dir.join("model.safetensors"), |n| Some(n.to_string()))
}

/// Writes `config` as `config.json` and the store as `model.safetensors` in `dir`.
pub fn save_dir(store: &ParamStore, config: &serde_json::Value, dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|source| ModelError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let path = dir.join("config.json");
    let tmp = dir.join("config.json.tmp");
    // INVARIANT: a `serde_json::Value` always serializes.
    let text = serde_json::to_string_pretty(config).expect("a JSON value serializes");
    std::fs::write(&tmp, text).map_err(|source| ModelError::Io {
        path: tmp.clone(),
        source,
    })?;
    std::fs::rename(&tmp, &path).map_err(|source| ModelError::Io { path, source })?;
    store.save_safetensors(&dir.join("model.safetensors"))
}
