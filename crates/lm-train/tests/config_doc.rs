//! docs/config.md cannot drift from the config types: every key it documents exists and every
//! key exists in it (section by section), and every TOML example on the page parses — the first,
//! "a minimal custom config", also trains.

use std::collections::{BTreeMap, BTreeSet};

use lm_train::config::RunConfig;

const DOC: &str = include_str!("../../../docs/config.md");

/// The ```toml blocks of the page, in order.
fn examples() -> Vec<String> {
    DOC.split("```toml\n")
        .skip(1)
        .map(|b| b.split("```").next().unwrap_or_default().to_string())
        .collect()
}

/// Keys documented in the table under each "## `[section]`" heading.
fn documented() -> BTreeMap<String, BTreeSet<String>> {
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut section = None;
    for line in DOC.lines() {
        if let Some(h) = line.strip_prefix("## `[") {
            section = h.split(']').next().map(String::from);
        } else if line.starts_with("## ") {
            section = None;
        } else if let (Some(s), Some(row)) = (&section, line.strip_prefix("| `")) {
            let key = row.split('`').next().unwrap_or_default().to_string();
            out.entry(s.clone()).or_default().insert(key);
        }
    }
    out
}

/// The keys a parsed config writes back, by section.
fn keys_of(cfg: &RunConfig) -> BTreeMap<String, BTreeSet<String>> {
    let doc: toml::Table = toml::from_str(&cfg.to_toml()).unwrap();
    doc.into_iter()
        .map(|(s, v)| {
            let keys = v
                .as_table()
                .map(|t| t.keys().cloned().collect())
                .unwrap_or_default();
            (s, keys)
        })
        .collect()
}

#[test]
fn every_example_parses_and_every_key_is_documented_once() {
    let examples = examples();
    assert_eq!(examples.len(), 5, "the page's examples");
    let parsed: Vec<RunConfig> = examples
        .iter()
        .enumerate()
        .map(|(i, e)| {
            RunConfig::from_toml(e, &format!("docs/config.md example {}", i + 1))
                .unwrap_or_else(|err| panic!("{err}"))
        })
        .collect();
    // The complete examples set every key, so what they write back is every key there is.
    let mut actual = keys_of(&parsed[1]);
    actual.extend(
        keys_of(&parsed[2])
            .into_iter()
            .filter(|(s, _)| s == "finetune"),
    );
    // `dataset` and `sources` exclude `corpus`, `val_fraction` and each other: the last two
    // examples have them.
    for (i, key) in [(3, "dataset"), (4, "sources")] {
        let data = keys_of(&parsed[i]).remove("data").unwrap_or_default();
        assert!(data.contains(key), "{data:?}");
        actual.entry("data".into()).or_default().extend(data);
    }
    assert_eq!(documented(), actual);
}

#[test]
fn the_minimal_example_trains() {
    let cfg = RunConfig::from_toml(&examples()[0], "docs/config.md").unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let mut t =
        lm_train::Trainer::new(cfg, &tmp.path().join("run"), candle_core::Device::Cpu).unwrap();
    t.stop_at(2).unwrap();
    let summary = t.train().unwrap();
    assert_eq!(summary.step, 2);
    assert!(summary.last_eval.is_some_and(|(_, v)| v.is_finite()));
}

#[test]
fn all_missing_required_keys_are_named_at_once() {
    let e = RunConfig::from_toml("[model]\nfamily = \"gpt\"\n", "mine.toml")
        .unwrap_err()
        .to_string();
    for key in [
        "model.n_layer",
        "model.n_head",
        "model.n_embd",
        "model.block_size",
        "optim.lr",
        "train.batch_size",
        "train.max_iters",
        "train.eval_interval",
    ] {
        assert!(e.contains(key), "{key} missing from: {e}");
    }
    assert!(e.starts_with("config mine.toml: "), "{e}");
}
