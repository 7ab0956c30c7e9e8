//! `--set KEY=VALUE` on the command line: overrides applied to a configuration's TOML and checked
//! like a config file.

use super::{config_err, dataset_replaces_corpus, RunConfig};
use crate::error::Result;

impl RunConfig {
    /// This configuration with `--set KEY=VALUE` overrides (and `--seed`, as `train.seed`),
    /// parsed and checked like a config file (errors name `--set` and the key). A value that is
    /// not TOML is taken as a string; `data.dataset` drops the recipe's corpus keys.
    pub fn with_overrides(self, sets: &[String], seed: Option<u64>) -> Result<RunConfig> {
        if sets.is_empty() && seed.is_none() {
            return Ok(self);
        }
        let mut doc: toml::Table = toml::from_str(&self.to_toml())
            .map_err(|e| config_err("--set", "(the configuration)", e.to_string()))?;
        let seed = seed.map(|s| format!("train.seed={s}"));
        dataset_replaces_corpus(&mut doc, sets);
        for set in sets.iter().chain(seed.as_ref()) {
            let Some((key, value)) = set.split_once('=') else {
                return Err(config_err(
                    "--set",
                    set,
                    "expected KEY=VALUE, e.g. optim.lr=3e-4".into(),
                ));
            };
            let value: toml::Value = toml::from_str::<toml::Table>(&format!("v = {value}"))
                .ok()
                .and_then(|mut t| t.remove("v"))
                .unwrap_or_else(|| toml::Value::String(value.to_string()));
            let mut parts: Vec<&str> = key.trim().split('.').collect();
            let Some(last) = parts.pop().filter(|l| !l.is_empty()) else {
                return Err(config_err("--set", set, "empty key".into()));
            };
            let mut table = &mut doc;
            for p in parts {
                table = table
                    .entry(p)
                    .or_insert_with(|| toml::Table::new().into())
                    .as_table_mut()
                    .ok_or_else(|| config_err("--set", key, format!("{p} is not a section")))?;
            }
            table.insert(last.to_string(), value);
        }
        let text = toml::to_string(&doc)
            .map_err(|e| config_err("--set", "(the configuration)", e.to_string()))?;
        RunConfig::from_toml(&text, "--set")
    }
}
