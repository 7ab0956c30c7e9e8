//! Prepare, read back, resume, import and refuse: on small generated inputs in every format.

use std::io::Write;
use std::path::{Path, PathBuf};

use lm_data::*;

/// Bytes as ids (vocabulary 256): a tokenizer whose output is checkable by hand.
struct Bytes {
    fail_after: Option<std::sync::atomic::AtomicUsize>,
}

impl Encoder for Bytes {
    fn encode_batch(&self, texts: &[&str]) -> std::result::Result<Vec<Encoded>, String> {
        if let Some(n) = &self.fail_after {
            if n.fetch_sub(1, std::sync::atomic::Ordering::SeqCst) == 0 {
                // Stands for a kill: no error path of prepare's runs.
                panic!("killed");
            }
        }
        Ok(texts
            .iter()
            .map(|t| Encoded {
                ids: t.bytes().map(u32::from).collect(),
                starts: (0..t.len() as u32).collect(),
            })
            .collect())
    }
    fn vocab_size(&self) -> usize {
        256
    }
}

const BYTES: Bytes = Bytes { fail_after: None };

fn doc(i: usize) -> String {
    format!("document {i} line one\nand line two of {i}\n")
}

fn write(path: &Path, bytes: &[u8]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, bytes).unwrap();
}

fn jsonl(docs: &[String]) -> Vec<u8> {
    docs.iter()
        .map(|d| serde_json::json!({ "id": 1, "text": d }).to_string() + "\n")
        .collect::<String>()
        .into_bytes()
}

/// A directory of .txt (documents separated by blank lines), .jsonl.gz, .jsonl.zst and .parquet.
fn mixed_corpus(root: &Path) -> Vec<String> {
    let docs: Vec<String> = (0..40).map(doc).collect();
    let text: String = docs[..10].iter().map(|d| format!("{d}\n")).collect();
    write(&root.join("a/00.txt"), text.as_bytes());
    let mut gz = flate2::write::GzEncoder::new(vec![], flate2::Compression::default());
    gz.write_all(&jsonl(&docs[10..20])).unwrap();
    write(&root.join("a/01.jsonl.gz"), &gz.finish().unwrap());
    // The C library's frames where it is built; ruzstd's on Apple targets (metal-check).
    #[cfg(not(target_vendor = "apple"))]
    let zst = zstd::encode_all(&jsonl(&docs[20..30])[..], 3).unwrap();
    #[cfg(target_vendor = "apple")]
    let zst = ruzstd::encoding::compress_to_vec(
        &jsonl(&docs[20..30])[..],
        ruzstd::encoding::CompressionLevel::Fastest,
    );
    write(&root.join("b/02.jsonl.zst"), &zst);
    write_parquet_texts(&root.join("b/03.parquet"), "text", &docs[30..40], 4).unwrap();
    write(&root.join("b/notes.csv"), b"skipped: not a known format");
    // The text file's documents end with their blank line.
    let mut want: Vec<String> = docs[..10].iter().map(|d| format!("{d}\n")).collect();
    want.extend(docs[10..].iter().cloned());
    want
}

fn all_documents(d: &Dataset, split: Split) -> Vec<String> {
    let v = d.split(split);
    (0..v.num_documents())
        .map(|i| {
            String::from_utf8(v.document(i).concat().iter().map(|&t| t as u8).collect()).unwrap()
        })
        .collect()
}

fn opts(inputs: Vec<String>, split: ValSplit) -> PrepareOptions {
    let mut o = PrepareOptions::new(inputs);
    o.split = split;
    o.shard_tokens = 300;
    o.batch_bytes = 200;
    o
}

#[test]
fn every_format_prepares_and_reads_back_in_order() {
    let tmp = tempfile::tempdir().unwrap();
    let want = mixed_corpus(&tmp.path().join("in"));
    let out = tmp.path().join("ds");
    let o = opts(
        vec![tmp.path().join("in").display().to_string()],
        ValSplit::Every(0.1),
    );
    let m = prepare(&out, &o, &BYTES, b"{}", &mut |_| {}).unwrap();
    assert_eq!(m.input_documents, 40);
    assert_eq!(m.params.sources.len(), 4, "the .csv is not an input");
    let d = Dataset::verify(&out).unwrap();
    // Every 10th document (i = 9, 19, 29, 39) is validation data; the rest is training data, in order.
    let (mut train, mut val) = (vec![], vec![]);
    for (i, doc) in want.iter().enumerate() {
        if i % 10 == 9 {
            val.push(doc.clone())
        } else {
            train.push(doc.clone())
        }
    }
    assert_eq!(all_documents(&d, Split::Train), train);
    assert_eq!(all_documents(&d, Split::Val), val);
    // Several shard pairs (300 tokens each), one stream: the tokens of the split are its documents.
    assert!(m.train.shards.len() > 3, "{:?}", m.train.shards.len());
    let t = d.split(Split::Train);
    let all: Vec<u8> = t.tokens(0..t.len()).iter().map(|&x| x as u8).collect();
    assert_eq!(String::from_utf8(all).unwrap(), train.concat());
    // Sentences are lines: document 0 has 3 (two lines and its blank line).
    assert_eq!(t.document(0).len(), 3);
    assert_eq!(
        t.document_range(1),
        want[0].len()..want[0].len() + want[1].len()
    );
    // Preparing again is a no-op returning the same manifest.
    assert_eq!(prepare(&out, &o, &BYTES, b"{}", &mut |_| {}).unwrap(), m);
}

#[test]
fn tail_split_is_the_last_fraction_of_the_text_and_one_line_files_are_one_document_per_line() {
    let tmp = tempfile::tempdir().unwrap();
    let f = tmp.path().join("lines.txt");
    let text: String = (0..10).map(|i| format!("line {i}\n")).collect();
    write(&f, text.as_bytes());
    let out = tmp.path().join("ds");
    prepare(
        &out,
        &opts(vec![f.display().to_string()], ValSplit::Tail(0.25)),
        &BYTES,
        b"{}",
        &mut |_| {},
    )
    .unwrap();
    let d = Dataset::open(&out).unwrap();
    // 70 bytes; lines start at 7·i: those at ≥ 52.5 (i = 8, 9) are validation data.
    assert_eq!(all_documents(&d, Split::Val), vec!["line 8\n", "line 9\n"]);
    assert_eq!(d.split(Split::Train).num_documents(), 8);
}

fn dir_bytes(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().to_string_lossy().into(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect();
    v.sort();
    v
}

#[test]
fn an_interrupted_prepare_resumes_to_the_same_bytes() {
    let tmp = tempfile::tempdir().unwrap();
    mixed_corpus(&tmp.path().join("in"));
    let o = opts(
        vec![tmp.path().join("in").display().to_string()],
        ValSplit::Every(0.1),
    );
    let whole = tmp.path().join("whole");
    prepare(&whole, &o, &BYTES, b"{}", &mut |_| {}).unwrap();
    for fail_after in [1, 3, 6] {
        let out = tmp.path().join(format!("cut{fail_after}"));
        let failing = Bytes {
            fail_after: Some(fail_after.into()),
        };
        let killed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            prepare(&out, &o, &failing, b"{}", &mut |_| {})
        }));
        assert!(killed.is_err());
        assert!(!out.join("manifest.json").exists());
        // Cut after finished pairs, not only at the start.
        assert_eq!(
            out.join("train-00000.bin").exists(),
            fail_after > 1,
            "after {fail_after}"
        );
        // What SIGKILL leaves besides: a temporary file.
        write(&out.join("train-00009.bin.tmp-1234"), b"partial");
        prepare(&out, &o, &BYTES, b"{}", &mut |_| {}).unwrap();
        assert_eq!(
            dir_bytes(&out),
            dir_bytes(&whole),
            "resumed after {fail_after} batches"
        );
    }
}

#[test]
fn damaged_or_truncated_shards_are_refused_naming_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    mixed_corpus(&tmp.path().join("in"));
    let out = tmp.path().join("ds");
    prepare(
        &out,
        &opts(
            vec![tmp.path().join("in").display().to_string()],
            ValSplit::Every(0.1),
        ),
        &BYTES,
        b"{}",
        &mut |_| {},
    )
    .unwrap();
    let shard = out.join("train-00001.bin");
    let mut bytes = std::fs::read(&shard).unwrap();
    bytes[HEADER + 3] ^= 0x40; // one token id, same length
    std::fs::write(&shard, &bytes).unwrap();
    Dataset::open(&out).unwrap(); // opening reads headers only
    let e = Dataset::verify(&out).unwrap_err().to_string();
    assert!(
        e.contains("train-00001.bin") && e.contains("checksum"),
        "{e}"
    );
    bytes.truncate(bytes.len() - 8);
    std::fs::write(&shard, &bytes).unwrap();
    let e = Dataset::open(&out).unwrap_err().to_string();
    assert!(
        e.contains("train-00001.bin") && e.contains("truncated"),
        "{e}"
    );
}

fn prepare_err(inputs: Vec<PathBuf>, o: impl FnOnce(&mut PrepareOptions)) -> String {
    let out = tempfile::tempdir().unwrap();
    let mut opts = opts(
        inputs.iter().map(|p| p.display().to_string()).collect(),
        ValSplit::Every(0.5),
    );
    o(&mut opts);
    let e = prepare(&out.path().join("ds"), &opts, &BYTES, b"{}", &mut |_| {}).unwrap_err();
    // Nothing is left of a prepare refused for its input.
    assert!(!out.path().join("ds").exists(), "{e}");
    e.to_string()
}

#[test]
fn bad_inputs_are_refused_naming_file_and_place() {
    let tmp = tempfile::tempdir().unwrap();
    let p = |name: &str, bytes: &[u8]| {
        let f = tmp.path().join(name);
        write(&f, bytes);
        f
    };
    let e = prepare_err(vec![p("bad.txt", b"good line\n\nbad \xff byte\n")], |_| {});
    assert!(
        e.contains("bad.txt") && e.contains("invalid UTF-8 at byte 15"),
        "{e}"
    );
    let e = prepare_err(
        vec![p("bad.jsonl", b"{\"text\": \"a\"}\n{\"text\": oops}\n")],
        |_| {},
    );
    assert!(e.contains("bad.jsonl:2") && e.contains("not JSON"), "{e}");
    let e = prepare_err(vec![p("field.jsonl", b"{\"body\": \"a\"}\n")], |_| {});
    assert!(
        e.contains("field.jsonl:1") && e.contains("no field \"text\"") && e.contains("body"),
        "{e}"
    );
    let e = prepare_err(vec![p("field.jsonl", b"{\"text\": 3}\n")], |_| {});
    assert!(
        e.contains("field.jsonl:1") && e.contains("not a string"),
        "{e}"
    );
    let pq = tmp.path().join("col.parquet");
    write_parquet_texts(&pq, "content", &["a".into(), "b".into()], 10).unwrap();
    let e = prepare_err(vec![pq.clone()], |_| {});
    assert!(
        e.contains("col.parquet") && e.contains("no field \"text\"") && e.contains("content"),
        "{e}"
    );
    let e = prepare_err(vec![p("data.json", b"[{\"text\": \"a\"}]")], |_| {});
    assert!(e.contains("data.json") && e.contains("JSON Lines"), "{e}");
    std::fs::create_dir_all(tmp.path().join("empty")).unwrap();
    let e = prepare_err(vec![tmp.path().join("empty")], |_| {});
    assert!(
        e.contains("empty") && e.contains("holds no input file"),
        "{e}"
    );
    let e = prepare_err(vec![tmp.path().join("missing.txt")], |_| {});
    assert!(
        e.contains("missing.txt") && e.contains("no such file"),
        "{e}"
    );
    let e = prepare_err(vec![p("blank.txt", b"\n \n\n")], |_| {});
    assert!(e.contains("no document"), "{e}");
    // One document: it becomes the validation document, and no training document is left.
    let e = prepare_err(vec![p("one.jsonl", b"{\"text\": \"only\"}\n")], |_| {});
    assert!(e.contains("no training document"), "{e}");
    let e = prepare_err(vec![p("ok.txt", b"a\n\nb\n")], |o| {
        o.split = ValSplit::Every(0.0)
    });
    assert!(e.contains("not in (0, 1)"), "{e}");
}

#[test]
fn skips_are_counted() {
    let tmp = tempfile::tempdir().unwrap();
    let f = tmp.path().join("c.jsonl");
    write(&f, b"{\"text\": \"one\"}\n{\"text\": \"  \"}\n{\"text\": null}\n{\"text\": \"t\xffo\"}\n{\"text\": \"two\"}\n{\"text\": \"three\"}\n");
    let out = tmp.path().join("ds");
    let mut o = opts(vec![f.display().to_string()], ValSplit::Every(0.3));
    o.read.skip_invalid = true;
    let m = prepare(&out, &o, &BYTES, b"{}", &mut |_| {}).unwrap();
    assert_eq!(
        m.skipped,
        Skipped {
            empty_documents: 2,
            invalid_utf8: 1
        }
    );
    assert_eq!(m.input_documents, 3);
    // ⌊(i+1)·0.3⌋ > ⌊i·0.3⌋ first at i = 3: none of 0..3, so the last document is validation data.
    let d = Dataset::open(&out).unwrap();
    assert_eq!(all_documents(&d, Split::Val), vec!["three"]);
    assert_eq!(all_documents(&d, Split::Train), vec!["one", "two"]);
}

fn u16s(ids: &[u16]) -> Vec<u8> {
    ids.iter().flat_map(|t| t.to_le_bytes()).collect()
}

#[test]
fn nanogpt_and_llmc_token_files_import() {
    let tmp = tempfile::tempdir().unwrap();
    // nanoGPT: documents end with the end-of-text id (9 here).
    let train = tmp.path().join("train.bin");
    write(&train, &u16s(&[1, 2, 9, 3, 4, 5, 9, 6]));
    write(&tmp.path().join("val.bin"), &u16s(&[7, 9]));
    let out = tmp.path().join("nano");
    import(
        &out,
        ImportFormat::NanoGpt,
        &[train.clone(), tmp.path().join("val.bin")],
        b"{}",
        10,
        Some(9),
    )
    .unwrap();
    let d = Dataset::verify(&out).unwrap();
    let docs = |s| {
        (0..d.split(s).num_documents())
            .map(|i| d.split(s).document(i).concat())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        docs(Split::Train),
        vec![vec![1, 2, 9], vec![3, 4, 5, 9], vec![6]]
    );
    assert_eq!(docs(Split::Val), vec![vec![7, 9]]);
    // llm.c: a 256-int32 header, then ids; documents start with the end-of-text id.
    let llmc = |name: &str, ids: &[u16], count: i32| {
        let mut b: Vec<u8> = [20240520i32, 1, count]
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect();
        b.resize(1024, 0);
        b.extend(u16s(ids));
        let p = tmp.path().join(name);
        write(&p, &b);
        p
    };
    let (t, v) = (
        llmc("data_train_000001.bin", &[9, 1, 2, 9, 3], 5),
        llmc("data_val_000000.bin", &[9, 4], 2),
    );
    let out = tmp.path().join("llmc");
    import(
        &out,
        ImportFormat::LlmC,
        &[v.clone(), t.clone()],
        b"{}",
        10,
        Some(9),
    )
    .unwrap();
    let d = Dataset::verify(&out).unwrap();
    let docs = |s| {
        (0..d.split(s).num_documents())
            .map(|i| d.split(s).document(i).concat())
            .collect::<Vec<_>>()
    };
    assert_eq!(docs(Split::Train), vec![vec![9, 1, 2], vec![9, 3]]);
    assert_eq!(docs(Split::Val), vec![vec![9, 4]]);
    // Refused: an id outside the vocabulary, a wrong count, a wrong magic.
    let e = import(
        &tmp.path().join("x1"),
        ImportFormat::NanoGpt,
        std::slice::from_ref(&train),
        b"{}",
        6,
        None,
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("train.bin") && e.contains("token 2 is id 9") && e.contains("6"),
        "{e}"
    );
    let short = llmc("short_val.bin", &[1, 2], 5);
    let e = import(
        &tmp.path().join("x2"),
        ImportFormat::LlmC,
        &[short],
        b"{}",
        10,
        None,
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("short_val.bin") && e.contains("5 tokens"), "{e}");
    let e = import(
        &tmp.path().join("x3"),
        ImportFormat::LlmC,
        &[train],
        b"{}",
        10,
        None,
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("train.bin") && e.contains("magic"), "{e}");
}
