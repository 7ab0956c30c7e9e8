//! A run's data: a prepared dataset (`[data] dataset = "DIR"`, made by `lm-train data
//! prepare`), or a corpus (`[data] corpus`) prepared through the same code into a cache keyed by
//! the content of the corpus and the tokenizer, so that only a run's first use of a corpus
//! tokenizes it. See docs/data.md.

use std::path::{Path, PathBuf};

pub use lm_data::{Dataset, Split, SplitView};

use crate::error::{io_err, Result, TrainError};
use crate::tokenizer::TextTokenizer;

/// The name of the bundled corpus in configs.
pub const BUILTIN_SHAKESPEARE: &str = "builtin:tinyshakespeare";

/// The bundled corpus: tinyshakespeare (1,115,394 bytes), compiled into the binary.
pub const SHAKESPEARE: &str = include_str!("../../../data/tinyshakespeare.txt");

/// Sentences (lines, newline included) grouped into documents (ended by blank lines). A text
/// without any blank line has no document boundaries: each line is then a document, so that the
/// train/validation split (by documents) and the objectives that pair documents still work.
pub fn documents(text: &str) -> Vec<Vec<&str>> {
    if !text.split_inclusive('\n').any(|l| l.trim().is_empty()) {
        return text.split_inclusive('\n').map(|l| vec![l]).collect();
    }
    let mut docs = vec![];
    let mut cur = vec![];
    for line in text.split_inclusive('\n') {
        cur.push(line);
        if line.trim().is_empty() {
            docs.push(std::mem::take(&mut cur));
        }
    }
    if !cur.is_empty() {
        docs.push(cur);
    }
    docs
}

/// The environment variable naming the cache of prepared corpora (default
/// `~/.cache/lm-train`).
pub const CACHE_ENV: &str = "LM_TRAIN_CACHE";

/// The cache directory: `$LM_TRAIN_CACHE`, else `$HOME/.cache/lm-train`, else none.
pub fn cache_root() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os(CACHE_ENV).filter(|d| !d.is_empty()) {
        return Some(PathBuf::from(d));
    }
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache").join("lm-train"))
}

/// Whether `dir` can be created and written (a probe file is written and removed).
fn writable(dir: &Path) -> bool {
    // A name of its own per call: threads of one process may probe at once.
    let probe = lm_data::tmp_path(&dir.join(".probe"));
    std::fs::create_dir_all(dir).is_ok()
        && std::fs::write(&probe, b"").is_ok()
        && std::fs::remove_file(&probe).is_ok()
}

/// Where a run's corpus is prepared: the cache when writable; else, said in one line, inside
/// the run directory (`fallback`).
pub fn cache_dir(fallback: &Path) -> PathBuf {
    if let Some(root) = cache_root().filter(|r| writable(r)) {
        return root;
    }
    let dir = fallback.join("cache");
    eprintln!(
        "the cache {} is not writable (set {CACHE_ENV}); preparing the corpus in {}",
        cache_root().map_or("(no $HOME)".into(), |r| r.display().to_string()),
        dir.display()
    );
    dir
}

/// The corpus's input paths for `lm_data`: the bundled corpus is written once into `cache`
/// (`builtin/tinyshakespeare.txt`); anything else is a file, directory or glob as given.
pub fn corpus_inputs(spec: &str, cache: &Path) -> Result<Vec<String>> {
    if spec == BUILTIN_SHAKESPEARE {
        let path = cache.join("builtin").join("tinyshakespeare.txt");
        if std::fs::read(&path).ok().as_deref() != Some(SHAKESPEARE.as_bytes()) {
            std::fs::create_dir_all(cache.join("builtin")).map_err(io_err(cache))?;
            lm_data::write_atomic(&path, SHAKESPEARE.as_bytes())?;
        }
        return Ok(vec![path.display().to_string()]);
    }
    if let Some(name) = spec.strip_prefix("builtin:") {
        return Err(TrainError::Corpus {
            corpus: spec.into(),
            problem: format!(
                "no built-in corpus {name:?}; the bundled one is {BUILTIN_SHAKESPEARE}"
            ),
        });
    }
    Ok(vec![spec.to_string()])
}

/// The identity of a corpus: SHA-256 over each input file's size and content (CRC-32 of its
/// bytes, read in 1 MiB blocks), in order; not its path, so a corpus moved or copied is found.
pub fn corpus_hash(inputs: &[String]) -> Result<String> {
    use std::io::Read;
    let files = lm_data::resolve_inputs(inputs)?;
    let mut id = String::new();
    let mut buf = vec![0u8; 1 << 20];
    for f in &files {
        let mut file = std::fs::File::open(&f.path).map_err(io_err(&f.path))?;
        let mut crc = crc32fast::Hasher::new();
        loop {
            let n = file.read(&mut buf).map_err(io_err(&f.path))?;
            if n == 0 {
                break;
            }
            crc.update(&buf[..n]);
        }
        id.push_str(&format!(
            "{:?}\t{}\t{:08x}\n",
            f.format,
            f.bytes,
            crc.finalize()
        ));
    }
    Ok(lm_data::sha256_hex(id.as_bytes()))
}

/// The text a tokenizer is trained on: the documents of the corpus before the validation tail
/// (`val_fraction` of its bytes), at most `limit` bytes. Read as a stream; memory holds the
/// sample only.
pub fn training_sample(inputs: &[String], val_fraction: f64, limit: usize) -> Result<String> {
    let files = lm_data::resolve_inputs(inputs)?;
    let total: u64 = files.iter().map(|f| f.bytes).sum();
    let cut = ((total as f64 * (1.0 - val_fraction)) as usize).min(limit);
    let mut text = String::new();
    let mut skipped = lm_data::Skipped::default();
    lm_data::for_each_document(&files, &Default::default(), &mut skipped, &mut |d, _| {
        if text.len() >= cut {
            return Err(lm_data::DataError::Stopped); // the sample is full
        }
        text.push_str(&d);
        Ok(())
    })?;
    text.truncate(text.floor_char_boundary(cut));
    Ok(text)
}

/// The characters of every document of the corpus (a character tokenizer's alphabet), read as a
/// stream.
pub fn corpus_alphabet(inputs: &[String]) -> Result<String> {
    let files = lm_data::resolve_inputs(inputs)?;
    let mut chars = std::collections::BTreeSet::new();
    let mut skipped = lm_data::Skipped::default();
    lm_data::for_each_document(&files, &Default::default(), &mut skipped, &mut |d, _| {
        chars.extend(d.chars());
        Ok(())
    })?;
    Ok(chars.into_iter().collect())
}

/// The prepared dataset of `corpus` with `tokenizer`, split at the last `val_fraction` of its
/// text, from the cache under `cache` (prepared there first when missing).
pub fn prepared_corpus(
    corpus: &str,
    tokenizer: &TextTokenizer,
    val_fraction: f64,
    cache: &Path,
) -> Result<Dataset> {
    Corpus::open(corpus, cache)?.prepared(tokenizer, val_fraction, cache)
}

/// A corpus's inputs and their content hash ([`corpus_hash`]), read once.
#[derive(Debug, Clone)]
pub struct Corpus {
    /// Files, directories or globs, as [`corpus_inputs`] gives them.
    pub inputs: Vec<String>,
    /// [`corpus_hash`] of them.
    pub hash: String,
}

impl Corpus {
    /// The corpus `spec` (the bundled one written into `cache` first), hashed.
    pub fn open(spec: &str, cache: &Path) -> Result<Self> {
        let inputs = corpus_inputs(spec, cache)?;
        let hash = corpus_hash(&inputs)?;
        Ok(Self { inputs, hash })
    }

    /// [`prepared_corpus`] of this corpus.
    pub fn prepared(
        &self,
        tokenizer: &TextTokenizer,
        val_fraction: f64,
        cache: &Path,
    ) -> Result<Dataset> {
        prepare_into_cache(self, tokenizer, val_fraction, cache)
    }
}

fn prepare_into_cache(
    corpus: &Corpus,
    tokenizer: &TextTokenizer,
    val_fraction: f64,
    cache: &Path,
) -> Result<Dataset> {
    let inputs = corpus.inputs.clone();
    let json = tokenizer.to_json()?;
    let key = lm_data::sha256_hex(
        format!(
            "{}\n{}\n{val_fraction}\n{}",
            corpus.hash,
            lm_data::sha256_hex(json.as_bytes()),
            lm_data::FORMAT
        )
        .as_bytes(),
    );
    let datasets = cache.join("datasets");
    let dir = datasets.join(&key[..24]);
    if let Ok(d) = Dataset::open(&dir) {
        return Ok(d);
    }
    // Prepared under a name of this process and renamed into place whole: runs preparing the
    // same corpus at once each finish theirs, one rename wins, and a reader never sees half.
    remove_dead_tmp(&datasets);
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = datasets.join(format!("{}.tmp-{}-{n}", &key[..24], std::process::id()));
    let mut opts = lm_data::PrepareOptions::new(inputs);
    opts.split = split_of_corpus(&opts.inputs, val_fraction)?;
    if let Err(e) = lm_data::prepare(&tmp, &opts, tokenizer, json.as_bytes(), &mut |_| {}) {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e.into());
    }
    if std::fs::rename(&tmp, &dir).is_err() {
        if Dataset::open(&dir).is_err() {
            // Left by an older version or damaged: replaced.
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::rename(&tmp, &dir).map_err(io_err(&dir))?;
        } else {
            let _ = std::fs::remove_dir_all(&tmp); // another run's rename won
        }
    }
    Ok(Dataset::open(&dir)?)
}

/// Removes the temporary datasets (`NAME.tmp-PID-N`) of processes that no longer run (Linux:
/// no `/proc/PID`; elsewhere none are removed).
fn remove_dead_tmp(datasets: &Path) {
    let Ok(entries) = std::fs::read_dir(datasets) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let pid = name
            .split_once(".tmp-")
            .and_then(|(_, rest)| rest.split('-').next())
            .and_then(|p| p.parse::<u32>().ok());
        if let Some(pid) = pid {
            let proc = Path::new("/proc");
            if proc.exists() && !proc.join(pid.to_string()).exists() {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
}

/// A corpus of plain text files keeps the split by position (its last `val_fraction`); other
/// formats are split by documents, evenly spread.
fn split_of_corpus(inputs: &[String], val_fraction: f64) -> Result<lm_data::ValSplit> {
    let plain = lm_data::resolve_inputs(inputs)?
        .iter()
        .all(|f| f.format == lm_data::InputFormat::Text(lm_data::Compression::None));
    Ok(match plain {
        true => lm_data::ValSplit::Tail(val_fraction),
        false => lm_data::ValSplit::Every(val_fraction),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tokenizer::CharTokenizer;

    #[test]
    fn a_corpus_is_prepared_once_into_the_cache_and_split_at_its_tail() {
        let text = "First:\nhello\n\nSecond:\nworld\n";
        assert_eq!(documents(text).concat().concat(), text);
        let dir = tempfile::tempdir().unwrap();
        let corpus = dir.path().join("c.txt");
        std::fs::write(&corpus, text).unwrap();
        let tok = TextTokenizer::Char(CharTokenizer::fit(text));
        let cache = dir.path().join("cache");
        let spec = corpus.display().to_string();
        let d = prepared_corpus(&spec, &tok, 0.5, &cache).unwrap();
        let (train, val) = (d.split(Split::Train), d.split(Split::Val));
        assert_eq!(
            tok.decode(&train.tokens(0..train.len())),
            "First:\nhello\n\n"
        );
        assert_eq!(tok.decode(&val.document(0).concat()), "Second:\nworld\n");
        // The second run opens what the first prepared: one dataset in the cache.
        let again = prepared_corpus(&spec, &tok, 0.5, &cache).unwrap();
        assert_eq!(again.dir(), d.dir());
        assert_eq!(
            std::fs::read_dir(cache.join("datasets")).unwrap().count(),
            1
        );
        // What a tokenizer is made from: the alphabet of all of it, a sample of its training part.
        assert_eq!(
            corpus_alphabet(std::slice::from_ref(&spec)).unwrap(),
            "\n:FScdehilnorstw"
        );
        assert_eq!(
            training_sample(std::slice::from_ref(&spec), 0.5, 1 << 20).unwrap(),
            "First:\nhello\n\n"
        );
        assert_eq!(
            training_sample(std::slice::from_ref(&spec), 0.5, 9).unwrap(),
            "First:\nhe"
        );
        // Another text is another dataset.
        std::fs::write(&corpus, "First:\nhello\n\nSecond:\nhello\n").unwrap();
        let other = prepared_corpus(&spec, &tok, 0.5, &cache).unwrap();
        assert_ne!(other.dir(), d.dir());
    }
}
