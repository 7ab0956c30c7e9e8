//! Inputs: files, directories and globs of plain text, JSON Lines (optionally gzip or zstd) and
//! Parquet, read as a stream of documents in a fixed order with bounded memory.
//!
//! - Plain text: documents end at blank lines (the blank line belongs to the document before it);
//!   a file without any blank line is one document per line; with `doc_per_file` a file is one
//!   document. A document's sentences are its lines, newline included, so a file's documents
//!   concatenate back to its text.
//! - JSON Lines: one object per line, the document is its text field (a string).
//! - Parquet: the document is the text column of each row (UTF-8 strings).
//!
//! Documents of only whitespace are skipped and counted; so are lines (text) or records (JSON
//! Lines) with invalid UTF-8 when `skip_invalid` is set, else they are an error naming the file
//! and the byte offset.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use crate::error::{io_err, DataError, Result};

/// How a file is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// Not compressed.
    None,
    /// gzip (`.gz`).
    Gzip,
    /// Zstandard (`.zst`).
    Zstd,
}

/// What a file holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputFormat {
    /// UTF-8 text.
    Text(Compression),
    /// JSON Lines.
    JsonLines(Compression),
    /// Apache Parquet.
    Parquet,
}

/// One input file and its format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputFile {
    /// The file.
    pub path: PathBuf,
    /// Its format, from its name.
    pub format: InputFormat,
    /// Its size in bytes (compressed).
    pub bytes: u64,
}

/// The format of a file by its name; `None` for a name lm-data does not know. `.json` is known
/// and refused: a JSON document is not a stream of documents (JSON Lines is).
pub fn format_of(path: &Path) -> Option<InputFormat> {
    let name = path.file_name()?.to_string_lossy().to_ascii_lowercase();
    let (stem, compression) = if let Some(s) = name.strip_suffix(".gz") {
        (s, Compression::Gzip)
    } else if let Some(s) = name.strip_suffix(".zst") {
        (s, Compression::Zstd)
    } else {
        (name.as_str(), Compression::None)
    };
    if stem.ends_with(".jsonl") || stem.ends_with(".ndjson") {
        Some(InputFormat::JsonLines(compression))
    } else if stem.ends_with(".parquet") && compression == Compression::None {
        Some(InputFormat::Parquet)
    } else if [".txt", ".text", ".md"].iter().any(|e| stem.ends_with(e)) {
        Some(InputFormat::Text(compression))
    } else {
        None
    }
}

fn input_file(path: &Path, format: InputFormat) -> Result<InputFile> {
    let bytes = std::fs::metadata(path).map_err(io_err(path))?.len();
    Ok(InputFile {
        path: path.to_path_buf(),
        format,
        bytes,
    })
}

/// A file named explicitly: its format by name; `.json` is refused; any other name is read as
/// plain text (a corpus called `input` is text).
fn named_file(path: &Path) -> Result<InputFile> {
    let lower = path.to_string_lossy().to_ascii_lowercase();
    if lower.ends_with(".json") || lower.ends_with(".json.gz") || lower.ends_with(".json.zst") {
        return Err(DataError::Input {
            path: path.to_path_buf(),
            problem: "a .json file is one JSON document, not a corpus: give JSON Lines (.jsonl, one object per line with a text field)".into(),
        });
    }
    if lower.ends_with(".parquet.gz") || lower.ends_with(".parquet.zst") {
        return Err(DataError::Input {
            path: path.to_path_buf(),
            problem: "a compressed .parquet file: Parquet compresses inside; decompress it first"
                .into(),
        });
    }
    let format = format_of(path).unwrap_or(InputFormat::Text(if lower.ends_with(".gz") {
        Compression::Gzip
    } else if lower.ends_with(".zst") {
        Compression::Zstd
    } else {
        Compression::None
    }));
    input_file(path, format)
}

/// The files of `inputs` in order: each a file, a directory (its files of a known format,
/// recursively, sorted by path; others skipped) or a glob pattern (its matches, sorted). An
/// input that matches nothing is an error naming it.
pub fn resolve_inputs(inputs: &[String]) -> Result<Vec<InputFile>> {
    let mut out = vec![];
    for spec in inputs {
        let path = Path::new(spec);
        let before = out.len();
        if path.is_dir() {
            let mut files = vec![];
            walk(path, &mut files)?;
            files.sort();
            for f in files {
                if let Some(format) = format_of(&f) {
                    out.push(input_file(&f, format)?);
                }
            }
        } else if path.exists() {
            out.push(named_file(path)?);
        } else if spec.contains(['*', '?', '[']) {
            let matches = glob::glob(spec).map_err(|e| DataError::Input {
                path: path.to_path_buf(),
                problem: format!("not a valid glob pattern: {e}"),
            })?;
            let mut files: Vec<PathBuf> = matches
                .filter_map(|m| m.ok())
                .filter(|p| p.is_file())
                .collect();
            files.sort();
            for f in files {
                out.push(named_file(&f)?);
            }
        } else {
            return Err(DataError::Io {
                path: path.to_path_buf(),
                source: std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "no such file or directory",
                ),
            });
        }
        if out.len() == before {
            return Err(DataError::Input {
                path: path.to_path_buf(),
                problem: "holds no input file (.txt, .md, .jsonl[.gz|.zst], .parquet)".into(),
            });
        }
    }
    Ok(out)
}

fn walk(dir: &Path, files: &mut Vec<PathBuf>) -> Result<()> {
    for entry in std::fs::read_dir(dir).map_err(io_err(dir))? {
        let entry = entry.map_err(io_err(dir))?;
        let p = entry.path();
        if entry.file_name().to_string_lossy().starts_with('.') {
            continue; // hidden files and directories (.git, editors' swap files)
        }
        if p.is_dir() {
            walk(&p, files)?;
        } else {
            files.push(p);
        }
    }
    Ok(())
}

/// How documents are read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadOptions {
    /// The JSON Lines field or Parquet column holding the text.
    pub text_field: String,
    /// Plain text: each file is one document.
    pub doc_per_file: bool,
    /// Skip (and count) invalid UTF-8 instead of failing.
    pub skip_invalid: bool,
}

impl Default for ReadOptions {
    fn default() -> Self {
        Self {
            text_field: "text".into(),
            doc_per_file: false,
            skip_invalid: false,
        }
    }
}

/// What reading skipped.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Skipped {
    /// Documents of only whitespace (or null Parquet values).
    pub empty_documents: u64,
    /// Lines or records with invalid UTF-8 (with `skip_invalid`).
    pub invalid_utf8: u64,
}

/// Reads every document of `files` in order, giving each to `sink` with the number of bytes of
/// plain text read so far before it (for a split by position; 0 for other formats). A sink
/// that returns [`DataError::Stopped`] ends the read early, and this returns `Ok`.
pub fn for_each_document(
    files: &[InputFile],
    opts: &ReadOptions,
    skipped: &mut Skipped,
    sink: &mut dyn FnMut(String, u64) -> Result<()>,
) -> Result<()> {
    match read_documents(files, opts, skipped, sink) {
        Err(DataError::Stopped) => Ok(()),
        r => r,
    }
}

fn read_documents(
    files: &[InputFile],
    opts: &ReadOptions,
    skipped: &mut Skipped,
    sink: &mut dyn FnMut(String, u64) -> Result<()>,
) -> Result<()> {
    let mut text_offset = 0u64;
    for f in files {
        match f.format {
            InputFormat::Text(c) => {
                let r = open(&f.path, c)?;
                read_text(f, r, opts, skipped, &mut text_offset, sink)?;
            }
            InputFormat::JsonLines(c) => read_jsonl(f, open(&f.path, c)?, opts, skipped, sink)?,
            InputFormat::Parquet => {
                let mut skips = crate::parquet_input::ParquetSkips::default();
                let read = crate::parquet_input::read_parquet(
                    &f.path,
                    &opts.text_field,
                    opts.skip_invalid,
                    &mut skips,
                    sink,
                );
                skipped.empty_documents += skips.empty;
                skipped.invalid_utf8 += skips.invalid_utf8;
                read?
            }
        }
    }
    Ok(())
}

fn open(path: &Path, c: Compression) -> Result<Box<dyn BufRead>> {
    let file = std::fs::File::open(path).map_err(io_err(path))?;
    Ok(match c {
        Compression::None => Box::new(BufReader::with_capacity(1 << 20, file)),
        Compression::Gzip => Box::new(BufReader::with_capacity(
            1 << 20,
            flate2::read::MultiGzDecoder::new(BufReader::new(file)),
        )),
        Compression::Zstd => Box::new(BufReader::with_capacity(1 << 20, zstd_reader(file, path)?)),
    })
}

/// A Zstandard stream's decoder: the C library's on Linux.
#[cfg(not(target_vendor = "apple"))]
fn zstd_reader(file: std::fs::File, path: &Path) -> Result<Box<dyn Read + Send>> {
    Ok(Box::new(
        zstd::stream::read::Decoder::new(file).map_err(io_err(path))?,
    ))
}

/// A Zstandard stream's decoder: ruzstd's (pure Rust) on Apple targets, where the C library
/// is not built.
#[cfg(target_vendor = "apple")]
fn zstd_reader(file: std::fs::File, path: &Path) -> Result<Box<dyn Read + Send>> {
    rust_zstd_reader(BufReader::new(file), path)
}

/// ruzstd's decoder over `source`, frame after frame (a file may hold several concatenated, as
/// the C library reads them); a damaged frame header names `path`.
#[cfg_attr(not(any(test, target_vendor = "apple")), allow(dead_code))] // Apple's reader; tested on Linux
fn rust_zstd_reader<R: BufRead + Send + 'static>(
    source: R,
    path: &Path,
) -> Result<Box<dyn Read + Send>> {
    Ok(Box::new(ZstdFrames {
        decoder: Some(zstd_frame(source, path)?),
        path: path.to_path_buf(),
    }))
}

fn zstd_frame<R: Read>(
    source: R,
    path: &Path,
) -> Result<ruzstd::decoding::StreamingDecoder<R, ruzstd::decoding::FrameDecoder>> {
    ruzstd::decoding::StreamingDecoder::new(source).map_err(|e| DataError::Input {
        path: path.to_path_buf(),
        problem: format!("not a Zstandard stream: {e}"),
    })
}

/// Concatenated Zstandard frames read as one stream.
struct ZstdFrames<R: BufRead> {
    decoder: Option<ruzstd::decoding::StreamingDecoder<R, ruzstd::decoding::FrameDecoder>>,
    path: PathBuf,
}

impl<R: BufRead> Read for ZstdFrames<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while let Some(d) = self.decoder.as_mut() {
            let n = d.read(buf)?;
            if n > 0 || buf.is_empty() {
                return Ok(n);
            }
            // This frame is done: another follows unless the source is at its end.
            let Some(mut source) = self.decoder.take().map(|d| d.into_inner()) else {
                break;
            };
            if !source.fill_buf()?.is_empty() {
                let next = zstd_frame(source, &self.path).map_err(std::io::Error::other)?;
                self.decoder = Some(next);
            }
        }
        Ok(0)
    }
}

/// Before a file has shown a blank line, at most this many bytes of it are held as one document;
/// past that, the file is read as one document per line.
const UNDECIDED_LIMIT: usize = 1 << 20;

/// How a text file splits into documents.
#[derive(Clone, Copy, PartialEq, Eq)]
enum TextMode {
    /// No blank line yet: the lines are held.
    Undecided,
    /// Documents end at blank lines.
    Paragraphs,
    /// Each line is a document.
    Lines,
    /// The file is one document.
    WholeFile,
}

fn read_err(path: &Path) -> impl Fn(std::io::Error) -> DataError + '_ {
    move |e| match e.kind() {
        std::io::ErrorKind::InvalidData => DataError::Input {
            path: path.to_path_buf(),
            problem: format!("cannot decompress: {e}"),
        },
        _ => io_err(path)(e),
    }
}

/// Gives `doc` (started at `start`) to `sink` unless it is only whitespace (counted).
fn emit(
    doc: String,
    start: u64,
    skipped: &mut Skipped,
    sink: &mut dyn FnMut(String, u64) -> Result<()>,
) -> Result<()> {
    if doc.trim().is_empty() {
        skipped.empty_documents += u64::from(!doc.is_empty());
        Ok(())
    } else {
        sink(doc, start)
    }
}

fn read_text(
    f: &InputFile,
    mut r: Box<dyn BufRead>,
    opts: &ReadOptions,
    skipped: &mut Skipped,
    text_offset: &mut u64,
    sink: &mut dyn FnMut(String, u64) -> Result<()>,
) -> Result<()> {
    let mut mode = match opts.doc_per_file {
        true => TextMode::WholeFile,
        false => TextMode::Undecided,
    };
    // The current document's lines and where each starts in the plain text read so far.
    let mut doc = String::new();
    let mut line_starts: Vec<u64> = vec![];
    let mut line = Vec::new();
    let mut at = 0u64; // offset in the (decompressed) file
    loop {
        line.clear();
        let n = r.read_until(b'\n', &mut line).map_err(read_err(&f.path))?;
        if n == 0 {
            break;
        }
        let start = *text_offset;
        *text_offset += n as u64;
        at += n as u64;
        let text = match std::str::from_utf8(&line) {
            Ok(t) => t,
            Err(_) if opts.skip_invalid => {
                skipped.invalid_utf8 += 1;
                continue;
            }
            Err(e) => {
                return Err(DataError::InvalidUtf8 {
                    path: f.path.clone(),
                    offset: at - n as u64 + e.valid_up_to() as u64,
                })
            }
        };
        let blank = text.trim().is_empty();
        if mode == TextMode::Lines {
            emit(text.to_string(), start, skipped, sink)?;
            continue;
        }
        if blank && mode == TextMode::Undecided {
            mode = TextMode::Paragraphs;
        }
        if mode == TextMode::Undecided && doc.len() + text.len() > UNDECIDED_LIMIT {
            mode = TextMode::Lines;
            emit_lines(std::mem::take(&mut doc), &line_starts, skipped, sink)?;
            line_starts.clear();
            emit(text.to_string(), start, skipped, sink)?;
            continue;
        }
        line_starts.push(start);
        doc.push_str(text);
        if blank && mode == TextMode::Paragraphs {
            emit(std::mem::take(&mut doc), line_starts[0], skipped, sink)?;
            line_starts.clear();
        }
    }
    match mode {
        // The whole file had no blank line: each line is a document.
        TextMode::Undecided => emit_lines(doc, &line_starts, skipped, sink),
        _ => emit(
            doc,
            line_starts.first().copied().unwrap_or(0),
            skipped,
            sink,
        ),
    }
}

/// Emits each line of `doc` (starting at `starts`) as a document.
fn emit_lines(
    doc: String,
    starts: &[u64],
    skipped: &mut Skipped,
    sink: &mut dyn FnMut(String, u64) -> Result<()>,
) -> Result<()> {
    for (l, &start) in doc.split_inclusive('\n').zip(starts) {
        emit(l.to_string(), start, skipped, sink)?;
    }
    Ok(())
}

fn read_jsonl(
    f: &InputFile,
    mut r: Box<dyn BufRead>,
    opts: &ReadOptions,
    skipped: &mut Skipped,
    sink: &mut dyn FnMut(String, u64) -> Result<()>,
) -> Result<()> {
    let mut line = Vec::new();
    let (mut at, mut number) = (0u64, 0u64);
    loop {
        line.clear();
        let n = r.read_until(b'\n', &mut line).map_err(read_err(&f.path))?;
        if n == 0 {
            return Ok(());
        }
        number += 1;
        let start = at;
        at += n as u64;
        if let Err(e) = std::str::from_utf8(&line) {
            if opts.skip_invalid {
                skipped.invalid_utf8 += 1;
                continue;
            }
            return Err(DataError::InvalidUtf8 {
                path: f.path.clone(),
                offset: start + e.valid_up_to() as u64,
            });
        }
        if line.iter().all(u8::is_ascii_whitespace) {
            continue; // a blank line between records
        }
        let value: serde_json::Value =
            serde_json::from_slice(&line).map_err(|e| DataError::Json {
                path: f.path.clone(),
                line: number,
                problem: format!("not JSON: {e}"),
            })?;
        let Some(obj) = value.as_object() else {
            return Err(DataError::Json {
                path: f.path.clone(),
                line: number,
                problem: format!("expected a JSON object with a {:?} field", opts.text_field),
            });
        };
        match obj.get(&opts.text_field) {
            Some(serde_json::Value::String(s)) if s.trim().is_empty() => {
                skipped.empty_documents += 1
            }
            Some(serde_json::Value::String(s)) => sink(s.clone(), 0)?,
            Some(serde_json::Value::Null) => skipped.empty_documents += 1,
            Some(other) => {
                return Err(DataError::Json {
                    path: f.path.clone(),
                    line: number,
                    problem: format!("field {:?} is {other}, not a string", opts.text_field),
                })
            }
            None => {
                let mut keys: Vec<&str> = obj.keys().map(String::as_str).collect();
                keys.truncate(8);
                return Err(DataError::MissingField {
                    path: f.path.clone(),
                    location: format!(":{number}"),
                    field: opts.text_field.clone(),
                    hint: format!(" (the record has {keys:?}; pass --text-field NAME)"),
                });
            }
        }
    }
}

/// Reads a whole (small) input as plain text documents: for tests and tools that want them in
/// memory.
pub fn read_all_documents(files: &[InputFile], opts: &ReadOptions) -> Result<Vec<String>> {
    let mut docs = vec![];
    let mut skipped = Skipped::default();
    for_each_document(files, opts, &mut skipped, &mut |d, _| {
        docs.push(d);
        Ok(())
    })?;
    Ok(docs)
}

// Needs the C library to write the frames, so not on Apple targets.
#[cfg(all(test, not(target_vendor = "apple")))]
mod tests {
    use super::*;

    /// Apple's Zstandard reader (ruzstd) reads what the C library writes, several frames in a
    /// row as one stream, and names the file when it is not Zstandard; the C reader reads
    /// ruzstd's frames.
    #[test]
    fn the_pure_rust_zstd_reader_reads_the_c_librarys_frames() {
        let a: Vec<u8> = (0..100_000u32)
            .flat_map(|i| format!("{i}\n").into_bytes())
            .collect();
        let b = b"{\"text\": \"a second frame\"}\n".to_vec();
        let mut file = zstd::encode_all(&a[..], 3).unwrap();
        file.extend(zstd::encode_all(&b[..], 19).unwrap());
        let path = Path::new("corpus.jsonl.zst");
        let mut out = vec![];
        rust_zstd_reader(std::io::Cursor::new(file), path)
            .unwrap()
            .read_to_end(&mut out)
            .unwrap();
        assert_eq!(out, [a.clone(), b].concat());
        let e = rust_zstd_reader(std::io::Cursor::new(b"plain text".to_vec()), path)
            .err()
            .unwrap();
        assert!(
            e.to_string()
                .starts_with("corpus.jsonl.zst: not a Zstandard stream"),
            "{e}"
        );
        let theirs =
            ruzstd::encoding::compress_to_vec(&a[..], ruzstd::encoding::CompressionLevel::Fastest);
        assert_eq!(zstd::decode_all(&theirs[..]).unwrap(), a);
    }
}
