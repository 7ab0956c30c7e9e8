//! HuggingFace checkpoint directories: `config.json` + `model.safetensors`, read and written with
//! transformers' names so that `from_pretrained` and `save_pretrained` interoperate. No network:
//! a checkpoint is always a local directory.

use std::path::Path;

use serde::de::DeserializeOwned;

use crate::error::{ModelError, Result};
use crate::params::ParamStore;
use crate::weights;

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
/// weight files (`model.safetensors` or the shards its index names; a stored scalar takes at
/// least two bytes, the slack is for parameters a checkpoint may leave out): a configuration
/// that declares a larger model than its weights is refused as it is built, before it
/// allocates.
pub fn store_for(dir: &Path, seed: u64) -> Result<ParamStore> {
    let path = dir.join(weights::SINGLE);
    let len = weights::total_len(&path)?;
    Ok(ParamStore::with_element_limit(
        seed,
        usize::try_from(len).unwrap_or(usize::MAX),
        &path,
    ))
}

/// Loads `dir`'s weights (`model.safetensors`, or the shards its index names) into `store`,
/// checking every parameter's presence and shape.
pub fn load_weights(store: &ParamStore, dir: &Path) -> Result<()> {
    store.load_safetensors(&dir.join(weights::SINGLE), |n| Some(n.to_string()))
}

/// Writes `config` as `config.json` and the store as `model.safetensors` in `dir`.
pub fn save_dir(store: &ParamStore, config: &serde_json::Value, dir: &Path) -> Result<()> {
    save_config(config, dir)?;
    store.save_safetensors(&dir.join(weights::SINGLE))
}

/// Writes `config` as `dir/config.json` (creating `dir`), through a temporary file.
pub fn save_config(config: &serde_json::Value, dir: &Path) -> Result<()> {
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
    std::fs::rename(&tmp, &path).map_err(|source| ModelError::Io { path, source })
}

/// Writes `config.json` and the index of a model sharded `count` ways in `dir`
/// (`model.safetensors.index.json`, transformers' layout): `shard` gives the shard, from 0, of
/// each parameter. The shards themselves are written by [`save_shard`], by whoever holds them.
pub fn save_sharded_index(
    store: &ParamStore,
    config: &serde_json::Value,
    dir: &Path,
    count: usize,
    shard: impl Fn(&str) -> usize,
) -> Result<()> {
    save_config(config, dir)?;
    let mut map = std::collections::BTreeMap::new();
    let mut total = 0u64;
    for (name, var) in store.vars() {
        total += (var.elem_count() * var.dtype().size_in_bytes()) as u64;
        let file = weights::shard_name(shard(&name), count);
        map.insert(name, file);
    }
    weights::write_index(&dir.join(weights::INDEX), &map, total)
}

/// Writes shard `index` of `count` into `dir`: the parameters for which `mine` holds.
pub fn save_shard(
    store: &ParamStore,
    dir: &Path,
    index: usize,
    count: usize,
    mine: impl Fn(&str) -> bool,
) -> Result<()> {
    store.save_safetensors_where(&dir.join(weights::shard_name(index, count)), mine)
}
