//! Weight files of a HuggingFace directory: one `model.safetensors`, or transformers' sharded
//! layout — `model.safetensors.index.json` (`{"metadata": {"total_size": bytes}, "weight_map":
//! {tensor: file}}`) beside the files it names (`model-00001-of-00002.safetensors`, …), as
//! `save_pretrained` writes a large model and as a ZeRO-3 run writes one shard per rank.
//! Readers take either: they are given the path of `model.safetensors`, and where that file is
//! absent its index names the files to read.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::error::{ModelError, Result};

/// The single-file name of a directory's weights.
pub const SINGLE: &str = "model.safetensors";

/// The index of a sharded directory's weights.
pub const INDEX: &str = "model.safetensors.index.json";

/// The file of shard `index` (from 0) of `count`, as transformers names it
/// (`model-00001-of-00002.safetensors` for the first of two).
pub fn shard_name(index: usize, count: usize) -> String {
    format!("model-{:05}-of-{:05}.safetensors", index + 1, count)
}

/// The index beside `single` (`…/model.safetensors` → `…/model.safetensors.index.json`).
pub fn index_of(single: &Path) -> PathBuf {
    let mut name = single.file_name().unwrap_or_default().to_os_string();
    name.push(".index.json");
    single.with_file_name(name)
}

/// Whether `dir` holds weights in either layout.
pub fn present(dir: &Path) -> bool {
    dir.join(SINGLE).is_file() || dir.join(INDEX).is_file()
}

/// The files that hold the weights named by `single`: itself when it exists, else the distinct
/// files its index maps tensors to, in the order of their names. An index whose file names
/// are not plain names in its directory (a `/`, `..`) is refused.
pub fn files(single: &Path) -> Result<Vec<PathBuf>> {
    let index = index_of(single);
    if single.is_file() || !index.is_file() {
        return Ok(vec![single.to_path_buf()]);
    }
    let map = read_index(&index)?;
    let mut names: Vec<&String> = map.values().collect();
    names.sort();
    names.dedup();
    Ok(names
        .into_iter()
        .map(|n| single.with_file_name(n))
        .collect())
}

/// Bytes of weight files `single` stands for ([`files`]).
pub fn total_len(single: &Path) -> Result<u64> {
    files(single)?.iter().try_fold(0u64, |sum, f| {
        let len = std::fs::metadata(f)
            .map_err(|source| ModelError::Io {
                path: f.clone(),
                source,
            })?
            .len();
        Ok(sum.saturating_add(len))
    })
}

/// The `weight_map` of an index file: tensor name → shard file name.
pub fn read_index(path: &Path) -> Result<BTreeMap<String, String>> {
    let bad = |problem: String| ModelError::BadFile {
        path: path.to_path_buf(),
        problem,
    };
    let text = std::fs::read_to_string(path).map_err(|source| ModelError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let json: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| bad(format!("not JSON: {e}")))?;
    let map = json
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| bad("no \"weight_map\" object (tensor name → file)".into()))?;
    let mut out = BTreeMap::new();
    for (tensor, file) in map {
        let file = file
            .as_str()
            .ok_or_else(|| bad(format!("weight_map[{tensor:?}] is not a file name")))?;
        let plain = !file.is_empty()
            && file != ".."
            && file != "."
            && !file.contains(['/', '\\'])
            && file != INDEX;
        if !plain {
            return Err(bad(format!(
                "weight_map[{tensor:?}] = {file:?}: expected a file name in the index's directory"
            )));
        }
        out.insert(tensor.clone(), file.to_string());
    }
    if out.is_empty() {
        return Err(bad("an empty weight_map".into()));
    }
    Ok(out)
}

/// Writes the index `path` for `weight_map` (tensor → file) and `total_size` bytes of tensor
/// data, through a temporary file and a rename.
pub fn write_index(
    path: &Path,
    weight_map: &BTreeMap<String, String>,
    total_size: u64,
) -> Result<()> {
    let json = serde_json::json!({
        "metadata": {"total_size": total_size},
        "weight_map": weight_map,
    });
    // INVARIANT: a `serde_json::Value` always serializes.
    let text = serde_json::to_string_pretty(&json).expect("a JSON value serializes");
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, text).map_err(|source| ModelError::Io {
        path: tmp.clone(),
        source,
    })?;
    std::fs::rename(&tmp, path).map_err(|source| ModelError::Io {
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpt::{Gpt, GptConfig};
    use candle_core::Device;

    fn values(store: &crate::params::ParamStore) -> BTreeMap<String, Vec<f32>> {
        store
            .vars()
            .into_iter()
            .map(|(n, v)| (n, v.flatten_all().unwrap().to_vec1::<f32>().unwrap()))
            .collect()
    }

    /// A model written as three shards (parameters dealt round-robin) and an index loads into
    /// a freshly initialized model equal to the one written; its weights' size is the shards'.
    #[test]
    fn shards_and_their_index_load_as_one_file_does() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = GptConfig::tiny(10);
        let (_, written) = Gpt::init(&cfg, 1, &Device::Cpu).unwrap();
        let names: Vec<String> = written.vars().into_iter().map(|(n, _)| n).collect();
        let shard = |n: &str| names.iter().position(|m| m == n).unwrap() % 3;
        crate::hf::save_sharded_index(&written, &serde_json::json!({}), dir.path(), 3, shard)
            .unwrap();
        for i in 0..3 {
            crate::hf::save_shard(&written, dir.path(), i, 3, |n| shard(n) == i).unwrap();
        }
        assert!(present(dir.path()) && !dir.path().join(SINGLE).exists());
        let single = dir.path().join(SINGLE);
        assert_eq!(files(&single).unwrap().len(), 3);
        assert_eq!(
            files(&single).unwrap()[0].file_name().unwrap(),
            "model-00001-of-00003.safetensors"
        );
        let shards: u64 = (0..3)
            .map(|i| {
                std::fs::metadata(dir.path().join(shard_name(i, 3)))
                    .unwrap()
                    .len()
            })
            .sum();
        assert_eq!(total_len(&single).unwrap(), shards);
        let (_, read) = Gpt::init(&cfg, 2, &Device::Cpu).unwrap();
        assert_ne!(values(&read), values(&written));
        crate::hf::load_weights(&read, dir.path()).unwrap();
        assert_eq!(values(&read), values(&written));
        // The index records every tensor's bytes, as transformers' `total_size` does.
        let index: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.path().join(INDEX)).unwrap())
                .unwrap();
        let bytes = 4 * cfg.num_params() as u64;
        assert_eq!(index["metadata"]["total_size"], bytes);
    }

    /// A damaged index, a shard that is missing and a tensor in two shards are refused, the
    /// error naming the file; the model keeps its values.
    #[test]
    fn a_bad_index_or_shard_is_refused_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let (_, store) = Gpt::init(&GptConfig::tiny(10), 1, &Device::Cpu).unwrap();
        let before = values(&store);
        let single = dir.path().join(SINGLE);
        let index = dir.path().join(INDEX);
        let load = || {
            crate::hf::load_weights(&store, dir.path())
                .unwrap_err()
                .to_string()
        };
        for (text, want) in [
            ("{", "not JSON"),
            ("{\"weight_map\": 3}", "no \"weight_map\""),
            ("{\"weight_map\": {}}", "an empty weight_map"),
            (
                "{\"weight_map\": {\"a\": \"../a.safetensors\"}}",
                "expected a file name",
            ),
            ("{\"weight_map\": {\"a\": 1}}", "is not a file name"),
        ] {
            std::fs::write(&index, text).unwrap();
            let e = load();
            assert!(e.contains(want) && e.contains(INDEX), "{text}: {e}");
        }
        // Both shards hold every tensor; then the second is gone.
        let map: BTreeMap<String, String> = store
            .vars()
            .into_iter()
            .enumerate()
            .map(|(i, (n, _))| (n, shard_name(i % 2, 2)))
            .collect();
        write_index(&index, &map, 0).unwrap();
        for i in 0..2 {
            crate::hf::save_shard(&store, dir.path(), i, 2, |_| true).unwrap();
        }
        let e = load();
        assert!(e.contains("in another of the index's files"), "{e}");
        std::fs::remove_file(dir.path().join(shard_name(1, 2))).unwrap();
        let e = load();
        assert!(e.contains("model-00002-of-00002.safetensors"), "{e}");
        assert!(!single.exists());
        assert_eq!(values(&store), before);
    }
}
