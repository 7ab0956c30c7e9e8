//! Fuzzing the readers of user input with proptest, for a bounded number of cases (CI runs it
//! with the rest of the suite): configs, task JSONL and tokenizer files — arbitrary bytes and
//! mutations of valid files. Each reader must answer `Ok` or a typed error, never panic; what a
//! reader accepts must then be usable (a parsed config re-serializes and parses again; a loaded
//! tokenizer encodes and decodes).

use std::path::Path;

use lm_train::config::{RunConfig, FINETUNE_RECIPES, RECIPES};
use lm_train::tokenizer::TextTokenizer;
use proptest::prelude::*;

/// Edits applied to a valid text: (position fraction, kind, byte).
fn mutations() -> impl Strategy<Value = Vec<(f64, u8, u8)>> {
    prop::collection::vec((0.0..1.0f64, 0u8..3, any::<u8>()), 1..8)
}

/// `text` with each edit applied: 0 replaces a byte, 1 inserts one, 2 deletes one.
fn mutate(text: &str, edits: &[(f64, u8, u8)]) -> Vec<u8> {
    let mut b = text.as_bytes().to_vec();
    for &(at, kind, byte) in edits {
        let i = ((b.len() as f64) * at) as usize;
        match kind {
            0 if i < b.len() => b[i] = byte,
            1 => b.insert(i.min(b.len()), byte),
            _ if i < b.len() => {
                b.remove(i);
            }
            _ => {}
        }
    }
    b
}

/// A config text either parses and round-trips, or is refused with a config error.
fn check_config(bytes: &[u8]) {
    let Ok(text) = std::str::from_utf8(bytes) else {
        return; // files are read as UTF-8 first; invalid UTF-8 is an I/O error there
    };
    if let Ok(cfg) = RunConfig::from_toml(text, "fuzz.toml") {
        let again = RunConfig::from_toml(&cfg.to_toml(), "again.toml").unwrap();
        assert_eq!(again, cfg);
    }
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

/// A small trained BPE tokenizer as JSON, and a char tokenizer's JSON.
fn tokenizer_texts() -> &'static [String; 2] {
    static TEXTS: std::sync::OnceLock<[String; 2]> = std::sync::OnceLock::new();
    TEXTS.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let lines: Vec<&str> = lm_train::data::SHAKESPEARE[..5_000].lines().collect();
        let save = |t: TextTokenizer, name: &str| {
            let p = dir.path().join(name);
            t.save(&p).unwrap();
            std::fs::read_to_string(p).unwrap()
        };
        [
            save(
                TextTokenizer::train(
                    lm_train::tokenizer::TokenizerKind::Bpe,
                    lm_train::config::Family::named("gpt").unwrap(),
                    120,
                    &lines,
                )
                .unwrap(),
                "bpe.json",
            ),
            save(
                TextTokenizer::train(
                    lm_train::tokenizer::TokenizerKind::Char,
                    lm_train::config::Family::named("gpt").unwrap(),
                    0,
                    &lines,
                )
                .unwrap(),
                "char.json",
            ),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn config_reader_never_panics_on_mutated_recipes(which in 0usize..10, edits in mutations()) {
        let all: Vec<&str> = RECIPES.iter().chain(FINETUNE_RECIPES).map(|r| r.1).collect();
        check_config(&mutate(all[which % all.len()], &edits));
    }

    #[test]
    fn config_reader_never_panics_on_arbitrary_text(text in "\\PC{0,200}") {
        check_config(text.as_bytes());
    }

    #[test]
    fn jsonl_reader_never_panics(
        lines in prop::collection::vec(
            prop_oneof![
                "\\PC{0,40}",
                Just("{\"text\": \"a\", \"label\": \"x\"}".to_string()),
                Just("{\"text_a\": \"a\", \"text_b\": \"b\", \"label\": 1}".to_string()),
                Just("{\"input\": \"t\", \"target\": \"u\"}".to_string()),
            ],
            0..6,
        ),
        edits in mutations(),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let path = write(dir.path(), "t.jsonl", &mutate(&lines.join("\n"), &edits));
        let _ = lm_train::tasks::read_jsonl(&path);
    }

    #[test]
    fn tokenizer_reader_never_panics(which in 0usize..2, edits in mutations()) {
        let dir = tempfile::tempdir().unwrap();
        let path = write(dir.path(), "tok.json", &mutate(&tokenizer_texts()[which], &edits));
        if let Ok(t) = TextTokenizer::load(&path) {
            if let Ok(ids) = t.encode("First Citizen") {
                let _ = t.decode(&ids);
            }
        }
    }
}
