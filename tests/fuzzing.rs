//! The parsers of outside input as fuzz targets: each takes arbitrary bytes, writes them where the
//! project would find such a file, and runs the reader that the project runs on it. A target
//! never panics: the reader answers `Ok` or a typed error; what it accepts must then be usable (a
//! config round-trips, a tokenizer encodes, an imported dataset verifies). The same functions
//! run under libFuzzer (`fuzz/`, `cargo xtask fuzz`) and under proptest in the normal suite
//! (`tests/fuzz_parsers.rs`), where the largest single allocation of each case is also bounded.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use candle_core::Device;
use lm_train::config::{RunConfig, FINETUNE_RECIPES, RECIPES};

/// A fuzz target: a parser of one kind of file, fed arbitrary bytes.
pub type Target = fn(&[u8]);

/// Every target by name (the names of `fuzz/fuzz_targets/*.rs`).
pub const TARGETS: &[(&str, Target)] = &[
    ("config", config),
    ("tokenizer", tokenizer),
    ("task_jsonl", task_jsonl),
    ("hf_config", hf_config),
    ("safetensors", safetensors),
    ("weights_index", weights_index),
    ("checkpoint_state", checkpoint_state),
    ("shard", shard),
    ("manifest", manifest),
    ("import", import),
    ("metrics", metrics),
    ("tensorboard", tensorboard),
];

/// The target called `name`.
pub fn target(name: &str) -> Option<Target> {
    TARGETS.iter().find(|(n, _)| *n == name).map(|(_, t)| *t)
}

/// A fresh directory for one input, and the file `name` in it holding `bytes`.
fn scratch(name: &str, bytes: &[u8]) -> (tempfile::TempDir, PathBuf) {
    // INVARIANT: a fuzzing run has a writable temporary directory (as the test suite does).
    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = dir.path().join(name);
    std::fs::write(&path, bytes).expect("the input is written");
    (dir, path)
}

/// `bytes` cut at the first NUL: the part before, and the part after (empty without a NUL).
fn split_nul(bytes: &[u8]) -> (&[u8], &[u8]) {
    match bytes.iter().position(|&b| b == 0) {
        Some(i) => (&bytes[..i], &bytes[i + 1..]),
        None => (bytes, &[]),
    }
}

/// A run config (TOML) and `--set KEY=VALUE` lines after a NUL, applied to it (or, with no TOML
/// before the NUL, to the demo recipe): what parses must round-trip through `to_toml`.
pub fn config(bytes: &[u8]) {
    let (toml, sets) = split_nul(bytes);
    let (Ok(toml), Ok(sets)) = (std::str::from_utf8(toml), std::str::from_utf8(sets)) else {
        return; // files are read as UTF-8 first: invalid UTF-8 is an I/O error there
    };
    let base = if toml.is_empty() {
        RunConfig::recipe("gpt-shakespeare-char")
    } else {
        RunConfig::from_toml(toml, "fuzz.toml")
    };
    let Ok(base) = base else { return };
    let round_trips = |cfg: &RunConfig| {
        let again = RunConfig::from_toml(&cfg.to_toml(), "again.toml");
        assert_eq!(again.as_ref().ok(), Some(cfg), "{again:?}");
    };
    round_trips(&base);
    let sets: Vec<String> = sets.lines().map(str::to_string).collect();
    if let Ok(cfg) = base.with_overrides(&sets, None) {
        round_trips(&cfg);
    }
}

/// A `tokenizer.json`: what loads must encode and decode.
pub fn tokenizer(bytes: &[u8]) {
    let (_dir, path) = scratch("tokenizer.json", bytes);
    if let Ok(t) = lm_train::tokenizer::TextTokenizer::load(&path) {
        if let Ok(ids) = t.encode("First Citizen:\nBefore we proceed") {
            let _ = t.decode(&ids);
        }
    }
}

/// A fine-tuning task's JSONL file, read as training data and as `predict` input.
pub fn task_jsonl(bytes: &[u8]) {
    let (_dir, path) = scratch("task.jsonl", bytes);
    let _ = lm_train::tasks::read_jsonl(&path);
    let _ = lm_train::tasks::read_inputs(&path);
}

/// The committed tiny HuggingFace checkpoints (`tests/fixtures/models`).
fn fixture_models() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/models")
}

/// A HuggingFace `config.json` beside real weights (the fixture of the family its `model_type`
/// names, else GPT-2's), loaded by every family's `from_hf_dir`.
pub fn hf_config(bytes: &[u8]) {
    let (dir, _) = scratch("config.json", bytes);
    let family = ["bart", "bert", "t5"]
        .into_iter()
        .find(|f| lm_models::hf::model_type(dir.path()).is_ok_and(|t| t == *f))
        .unwrap_or("gpt2");
    let weights = fixture_models().join(family).join("model.safetensors");
    // INVARIANT: the fixtures are committed, and the scratch directory is ours.
    std::os::unix::fs::symlink(weights, dir.path().join("model.safetensors"))
        .expect("the fixture's weights are linked");
    let (d, cpu) = (dir.path(), &Device::Cpu);
    let _ = lm_models::gpt::Gpt::from_hf_dir(d, cpu);
    let _ = lm_models::bert::Bert::from_hf_dir(d, cpu);
    let _ = lm_models::bert::BertForSequenceClassification::from_hf_dir(d, 3, 0, cpu);
    let _ = lm_models::bart::Bart::from_hf_dir(d, cpu);
    let _ = lm_models::t5::T5::from_hf_dir(d, cpu);
}

/// A two-block GPT of width 8 and its AdamW, the model whose files `safetensors` reads.
fn tiny_gpt() -> (lm_models::ParamStore, lm_optim::Adam) {
    let cfg: lm_models::gpt::GptConfig = serde_json::from_value(serde_json::json!({
        "vocab_size": 16, "n_positions": 8, "n_embd": 8, "n_layer": 2, "n_head": 2
    }))
    .expect("a valid GPT config");
    // INVARIANT: the config above is valid, so building the model and its optimizer succeeds.
    let (_, store) = lm_models::gpt::Gpt::init(&cfg, 0, &Device::Cpu).expect("a tiny GPT");
    let group = lm_optim::ParamGroup::new("all", store.vars(), 0.1);
    let adam = lm_optim::Adam::new(vec![group], lm_optim::AdamConfig::adamw()).expect("AdamW");
    (store, adam)
}

/// Which of two shards holds a tiny GPT's tensor `name` in the sharded seed: the first
/// block's in the second.
fn second_shard(name: &str) -> bool {
    name.contains(".h.0.")
}

/// A `model.safetensors.index.json` beside a tiny GPT's shards — one of one with every tensor,
/// and two of two with the first block apart: what every reader of a model directory reads where
/// `model.safetensors` is absent.
pub fn weights_index(bytes: &[u8]) {
    let (dir, _) = scratch(lm_models::weights::INDEX, bytes);
    let (store, _) = tiny_gpt();
    // (shard, of how many, which tensors it holds)
    type Shard = (usize, usize, fn(&str) -> bool);
    let shards: [Shard; 3] = [
        (0, 1, |_| true),
        (0, 2, |n| !second_shard(n)),
        (1, 2, second_shard),
    ];
    for (i, count, mine) in shards {
        // INVARIANT: the scratch directory is ours and writable.
        lm_models::hf::save_shard(&store, dir.path(), i, count, mine).expect("a shard is written");
    }
    let single = dir.path().join(lm_models::weights::SINGLE);
    let _ = store.load_safetensors(&single, |n| Some(n.to_string()));
    let _ = lm_models::hf::store_for(dir.path(), 0);
}

/// A `model.safetensors` and an `optimizer.safetensors` (the same bytes) for a tiny GPT.
pub fn safetensors(bytes: &[u8]) {
    let (_dir, path) = scratch("model.safetensors", bytes);
    let (store, mut adam) = tiny_gpt();
    let _ = store.load_safetensors_layout(&path, "transformer.", |_| false);
    let _ = lm_optim::load_state(&mut adam, &path, &Device::Cpu);
}

/// A checkpoint's `state.json`, then the checksums it lists checked (against absent files).
pub fn checkpoint_state(bytes: &[u8]) {
    let (dir, _) = scratch("state.json", bytes);
    if let Ok(state) = lm_train::checkpoint::read_state(dir.path()) {
        let verified = lm_train::checkpoint::verify_checksums(dir.path(), &state);
        assert_eq!(verified.is_ok(), state.checksums.is_empty(), "{verified:?}");
    }
}

/// Reads what a shard that opened offers: boundaries, tokens, the content check.
fn read_shard(shard: &lm_data::Shard) {
    let h = shard.header();
    let mut out = vec![];
    shard.extend_into(0..h.tokens as usize + 3, &mut out);
    for s in 0..=(h.sentences as usize).min(8) {
        let _ = shard.sentence_start(s);
    }
    for d in 0..=(h.documents as usize).min(8) {
        let _ = shard.document_first_sentence(d);
    }
    let _ = shard.check_contents(300);
}

/// A token shard (`train-00000.bin`): opened (header against size) and read.
pub fn shard(bytes: &[u8]) {
    let (_dir, path) = scratch("train-00000.bin", bytes);
    if let Ok(shard) = lm_data::Shard::open(&path) {
        read_shard(&shard);
    }
}

/// A small valid dataset (nanoGPT ids imported), made once per process: its shards sit beside
/// the fuzzed manifests.
fn template_dataset() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| {
        // INVARIANT: importing two small valid files into a fresh directory succeeds.
        let dir = tempfile::tempdir().expect("a temporary directory");
        let ids: Vec<u8> = (0u16..200).flat_map(|i| (i % 50).to_le_bytes()).collect();
        let files = [dir.path().join("a.bin"), dir.path().join("a_val.bin")];
        for f in &files {
            std::fs::write(f, &ids).expect("ids written");
        }
        let out = dir.path().join("data");
        lm_data::import(
            &out,
            lm_data::ImportFormat::NanoGpt,
            &files,
            b"{}",
            300,
            Some(0),
        )
        .expect("the template imports");
        dir
    })
    .path()
}

/// Reads what an opened dataset offers, split by split.
fn read_dataset(d: &lm_data::Dataset) {
    for split in [lm_data::Split::Train, lm_data::Split::Val] {
        let view = d.split(split);
        let _ = view.tokens(0..view.len().min(64));
        for doc in 0..view.num_documents().min(4) {
            let _ = view.document_range(doc);
            let _ = view.document(doc);
        }
    }
}

/// A prepared dataset's `manifest.json` beside valid shards: opened, read, verified.
pub fn manifest(bytes: &[u8]) {
    let (dir, _) = scratch("manifest.json", bytes);
    let template = template_dataset().join("data");
    for f in ["tokenizer.json", "train-00000.bin", "val-00000.bin"] {
        // INVARIANT: the template holds these files, and the scratch directory is ours.
        std::fs::copy(template.join(f), dir.path().join(f)).expect("a template file is copied");
    }
    if let Ok(d) = lm_data::Dataset::open(dir.path()) {
        read_dataset(&d);
        let _ = lm_data::Dataset::verify(dir.path());
    }
}

/// nanoGPT (first byte even) or llm.c (odd) token files: what imports must verify.
pub fn import(bytes: &[u8]) {
    let Some((&mode, ids)) = bytes.split_first() else {
        return;
    };
    let format = match mode % 2 {
        0 => lm_data::ImportFormat::NanoGpt,
        _ => lm_data::ImportFormat::LlmC,
    };
    let eot = (mode & 2 != 0).then_some(u32::from(mode >> 2));
    let (dir, train) = scratch("train.bin", ids);
    let val = dir.path().join("part_val.bin");
    // INVARIANT: the scratch directory is ours.
    std::fs::write(&val, ids).expect("the input is written");
    let out = dir.path().join("data");
    if lm_data::import(&out, format, &[train, val], b"{}", 300, eot).is_ok() {
        let verified = lm_data::Dataset::verify(&out);
        assert!(
            verified.is_ok(),
            "an imported dataset fails verify: {verified:?}"
        );
        // INVARIANT: verified just above.
        read_dataset(&verified.expect("verified"));
    }
}

/// A run's `metrics.jsonl`.
pub fn metrics(bytes: &[u8]) {
    let (_dir, path) = scratch("metrics.jsonl", bytes);
    let _ = lm_train::metrics::MetricsLog::read(&path);
}

/// A TensorBoard event file of a run's `tb/`.
pub fn tensorboard(bytes: &[u8]) {
    let (_dir, path) = scratch("events.out.tfevents", bytes);
    let _ = lm_train::tensorboard::read_events(&path);
}

/// Valid inputs of target `name` to start fuzzing from (libFuzzer's seed corpus, proptest's
/// mutation bases).
pub fn seeds(name: &str) -> Vec<Vec<u8>> {
    let fixture = |family: &str, file: &str| {
        std::fs::read(fixture_models().join(family).join(file)).unwrap_or_default()
    };
    match name {
        "config" => RECIPES
            .iter()
            .chain(FINETUNE_RECIPES)
            .map(|r| r.1.as_bytes().to_vec())
            .chain([b"\0train.max_iters=3\noptim.lr=1e-3\nmodel.n_layer=1".to_vec()])
            .collect(),
        "tokenizer" => ["bert-300.json", "t5-300.json"]
            .iter()
            .filter_map(|f| {
                std::fs::read(
                    Path::new(env!("CARGO_MANIFEST_DIR"))
                        .join("fixtures/tokenizers")
                        .join(f),
                )
                .ok()
            })
            .collect(),
        "task_jsonl" => vec![
            b"{\"text\": \"a b\", \"label\": \"x\"}\n{\"text\": \"c\", \"label\": \"y\"}\n"
                .to_vec(),
            b"{\"text_a\": \"a\", \"text_b\": \"b\", \"label\": 1}\n".to_vec(),
            b"{\"input\": \"t\", \"target\": \"u\"}\n{\"input\": \"v\"}\n".to_vec(),
        ],
        "hf_config" => ["gpt2", "bert", "bart", "t5", "t5v11"]
            .iter()
            .map(|f| fixture(f, "config.json"))
            .collect(),
        "safetensors" => tiny_gpt_files(),
        "weights_index" => {
            let (store, _) = tiny_gpt();
            let map = |count: usize| -> Vec<u8> {
                let map: serde_json::Map<String, serde_json::Value> = store
                    .vars()
                    .into_iter()
                    .map(|(n, _)| {
                        let i = usize::from(count == 2 && second_shard(&n));
                        (n, lm_models::weights::shard_name(i, count).into())
                    })
                    .collect();
                let index = serde_json::json!({"metadata": {"total_size": 0}, "weight_map": map});
                serde_json::to_vec(&index).unwrap_or_default()
            };
            vec![map(1), map(2)]
        }
        "checkpoint_state" => vec![
            serde_json::to_vec(&lm_train::checkpoint::TrainerState::fresh(7)).unwrap_or_default(),
        ],
        "shard" => {
            vec![std::fs::read(template_dataset().join("data/train-00000.bin")).unwrap_or_default()]
        }
        "manifest" => {
            vec![std::fs::read(template_dataset().join("data/manifest.json")).unwrap_or_default()]
        }
        "import" => vec![
            [0u8]
                .into_iter()
                .chain((0u16..64).flat_map(|i| (i % 9).to_le_bytes()))
                .collect(),
            [3u8]
                .into_iter()
                .chain(llmc_file(&[1, 2, 3, 0, 4, 5]))
                .collect(),
        ],
        "metrics" => vec![
            b"{\"step\":10,\"loss\":3.5,\"lr\":0.001}\n{\"step\":20,\"val_loss\":3.1}\n".to_vec(),
        ],
        "tensorboard" => tensorboard_seed(),
        _ => vec![],
    }
}

/// An llm.c token file: its 1 KiB header (magic 20240520, version 1, count) and uint16 ids.
fn llmc_file(ids: &[u16]) -> Vec<u8> {
    let mut header = [0i32; 256];
    header[..3].copy_from_slice(&[20_240_520, 1, ids.len() as i32]);
    header
        .iter()
        .flat_map(|h| h.to_le_bytes())
        .chain(ids.iter().flat_map(|i| i.to_le_bytes()))
        .collect()
}

/// The tiny GPT's weights and its optimizer state, as the project writes them.
fn tiny_gpt_files() -> Vec<Vec<u8>> {
    let (store, adam) = tiny_gpt();
    let Ok(dir) = tempfile::tempdir() else {
        return vec![];
    };
    let (m, o) = (
        dir.path().join("m.safetensors"),
        dir.path().join("o.safetensors"),
    );
    let tensors: std::collections::HashMap<String, candle_core::Tensor> = store
        .vars()
        .into_iter()
        .map(|(n, v)| (n, v.as_tensor().clone()))
        .collect();
    let _ = candle_core::safetensors::save(&tensors, &m);
    let _ = lm_optim::save_state(&adam, &o);
    [m, o]
        .iter()
        .filter_map(|p| std::fs::read(p).ok())
        .collect()
}

/// An event file with a scalar and a text, as a run writes it.
fn tensorboard_seed() -> Vec<Vec<u8>> {
    let Ok(dir) = tempfile::tempdir() else {
        return vec![];
    };
    let Ok(w) = lm_train::tensorboard::EventWriter::create(dir.path()) else {
        return vec![];
    };
    let _ = w.scalars(3, &[("train/loss", 2.5)]);
    let _ = w.text(3, "sample", "To be");
    std::fs::read(w.path()).ok().into_iter().collect()
}
