//! Tokenizers: the character-level one of the small demo, and BPE (GPT), WordPiece (BERT) and
//! Unigram (T5) trained on local text with the `tokenizers` crate, each with its family's
//! special tokens (T5's `<extra_id_k>` sentinels included). Saved as `tokenizer.json`; no hub.

use std::path::Path;

use serde::{Deserialize, Serialize};
use tokenizers::models::bpe::{BpeTrainer, BPE};
use tokenizers::models::unigram::{Unigram, UnigramTrainer};
use tokenizers::models::wordpiece::{WordPiece, WordPieceTrainer};
use tokenizers::models::{ModelWrapper, TrainerWrapper};
use tokenizers::normalizers::bert::BertNormalizer;
use tokenizers::pre_tokenizers::bert::BertPreTokenizer;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::metaspace::{Metaspace, PrependScheme};
use tokenizers::AddedToken;

use crate::error::{io_err, Result, TrainError};

mod fast;

/// Maps each character of a fixed alphabet to its index.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CharTokenizer {
    chars: Vec<char>,
}

impl CharTokenizer {
    /// The alphabet of `text`, sorted (nanoGPT's `sorted(set(data))`).
    pub fn fit(text: &str) -> Self {
        let mut chars: Vec<char> = text.chars().collect();
        chars.sort_unstable();
        chars.dedup();
        Self { chars }
    }

    /// Number of distinct tokens.
    pub fn vocab_size(&self) -> usize {
        self.chars.len()
    }

    /// Token ids of `text`; characters outside the alphabet are an error naming the first one.
    pub fn encode(&self, text: &str) -> std::result::Result<Vec<u32>, char> {
        text.chars()
            .map(|c| {
                self.chars
                    .binary_search(&c)
                    .map(|i| i as u32)
                    .map_err(|_| c)
            })
            .collect()
    }

    /// The text of `ids`; unknown ids become U+FFFD.
    pub fn decode(&self, ids: &[u32]) -> String {
        ids.iter()
            .map(|&i| self.chars.get(i as usize).copied().unwrap_or('\u{FFFD}'))
            .collect()
    }
}

pub use crate::choices::TokenizerKind;
use crate::registry::Family;

/// T5's whitespace normalization, as its `tokenizer.json` does it after sentencepiece's
/// `nmt_nfkc` map: tabs, line breaks and carriage returns become spaces, runs of spaces one
/// space. Without it a trained Unigram has no piece for a line break and reads `<unk>` there,
/// where transformers' T5 tokenizer reads a word boundary.
fn t5_whitespace() -> tokenizers::Result<tokenizers::NormalizerWrapper> {
    use tokenizers::normalizers::replace::{Replace, ReplacePattern};
    let replace = |pattern: &str, with: &str| -> tokenizers::Result<_> {
        Ok(Replace::new(ReplacePattern::Regex(pattern.into()), with)?.into())
    };
    Ok(tokenizers::normalizers::Sequence::new(vec![
        replace("[\\t\\n\\r]", " ")?,
        replace(" {2,}", " ")?,
    ])
    .into())
}

/// The special tokens of `family` for a tokenizer of `kind`, in id order (they get the first
/// ids).
pub fn special_tokens(family: Family, kind: TokenizerKind) -> Vec<String> {
    (family.special_tokens)(kind)
}

/// A tokenizer of any kind.
#[derive(Debug, Clone)]
pub enum TextTokenizer {
    /// Character level.
    Char(CharTokenizer),
    /// A `tokenizers` tokenizer (BPE, WordPiece, Unigram).
    Hf(Box<tokenizers::Tokenizer>),
}

fn tok_err(what: &str) -> impl FnOnce(tokenizers::Error) -> TrainError + '_ {
    move |e| TrainError::Corpus {
        corpus: what.into(),
        problem: format!("tokenizer: {e}"),
    }
}

impl TextTokenizer {
    /// The tokenizer's kind, from its model (BPE, WordPiece or Unigram) or character level.
    pub fn kind(&self) -> TokenizerKind {
        match self {
            Self::Char(_) => TokenizerKind::Char,
            Self::Hf(t) => match t.get_model() {
                ModelWrapper::WordPiece(_) => TokenizerKind::Wordpiece,
                ModelWrapper::Unigram(_) => TokenizerKind::Unigram,
                _ => TokenizerKind::Bpe,
            },
        }
    }

    /// Trains a tokenizer of `kind` on `lines` with `family`'s special tokens.
    pub fn train(
        kind: TokenizerKind,
        family: Family,
        vocab_size: usize,
        lines: &[&str],
    ) -> Result<Self> {
        if kind == TokenizerKind::Char {
            return Ok(Self::Char(CharTokenizer::fit(&lines.concat())));
        }
        let specials: Vec<AddedToken> = special_tokens(family, kind)
            .into_iter()
            .map(|t| AddedToken::from(t, true))
            .collect();
        let mut tok = match kind {
            TokenizerKind::Bpe => {
                let mut t = tokenizers::Tokenizer::new(ModelWrapper::BPE(BPE::default()));
                t.with_pre_tokenizer(Some(ByteLevel::new(false, true, true)));
                t.with_decoder(Some(ByteLevel::default()));
                t
            }
            TokenizerKind::Wordpiece => {
                let mut t = tokenizers::Tokenizer::new(ModelWrapper::WordPiece(
                    WordPiece::builder()
                        .unk_token("[UNK]".into())
                        .build()
                        .map_err(tok_err("wordpiece"))?,
                ));
                t.with_normalizer(Some(BertNormalizer::default()));
                t.with_pre_tokenizer(Some(BertPreTokenizer));
                t.with_decoder(Some(tokenizers::decoders::wordpiece::WordPiece::default()));
                t
            }
            TokenizerKind::Unigram => {
                let mut t = tokenizers::Tokenizer::new(ModelWrapper::Unigram(Unigram::default()));
                t.with_normalizer(Some(t5_whitespace().map_err(tok_err("unigram"))?));
                t.with_pre_tokenizer(Some(Metaspace::new('▁', PrependScheme::Always, true)));
                t.with_decoder(Some(tokenizers::decoders::metaspace::Metaspace::new(
                    '▁',
                    PrependScheme::Always,
                    true,
                )));
                t
            }
            // INVARIANT: the char tokenizer returned before this match.
            TokenizerKind::Char => unreachable!(),
        };
        let mut trainer: TrainerWrapper = match kind {
            TokenizerKind::Bpe => BpeTrainer::builder()
                .vocab_size(vocab_size)
                .show_progress(false)
                .special_tokens(specials)
                .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
                .build()
                .into(),
            TokenizerKind::Wordpiece => WordPieceTrainer::builder()
                .vocab_size(vocab_size)
                .show_progress(false)
                .special_tokens(specials)
                .build()
                .into(),
            TokenizerKind::Unigram => UnigramTrainer::builder()
                .vocab_size(vocab_size as u32)
                .show_progress(false)
                .special_tokens(specials)
                .unk_token(Some("<unk>".into()))
                .build()
                .map_err(|e| TrainError::Corpus {
                    corpus: "unigram".into(),
                    problem: format!("tokenizer: {e}"),
                })?
                .into(),
            // INVARIANT: the char tokenizer returned before this match.
            TokenizerKind::Char => unreachable!(),
        };
        tok.train(&mut trainer, lines.iter().copied())
            .map_err(tok_err("tokenizer training"))?;
        Ok(Self::Hf(Box::new(tok)))
    }

    /// Vocabulary size (special tokens included).
    pub fn vocab_size(&self) -> usize {
        match self {
            Self::Char(c) => c.vocab_size(),
            Self::Hf(t) => t.get_vocab_size(true),
        }
    }

    /// Token ids of `text` (no special tokens added).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        match self {
            Self::Char(c) => c.encode(text).map_err(|ch| TrainError::Corpus {
                corpus: "text".into(),
                problem: format!("character {ch:?} is not in the tokenizer's alphabet"),
            }),
            Self::Hf(t) => Ok(t
                .encode_fast(text, false)
                .map_err(tok_err("text"))?
                .get_ids()
                .to_vec()),
        }
    }

    /// `text` as the model sees one input: the file's normalizer, pre-tokenizer and
    /// post-processor applied, so its special tokens are added (`[CLS] … [SEP]` for BERT), as
    /// transformers' `tokenizer(text)` does. Character tokenizers have none to add.
    pub fn encode_for_model(&self, text: &str) -> Result<Vec<u32>> {
        match self {
            Self::Char(_) => self.encode(text),
            Self::Hf(t) => Ok(t
                .encode(text, true)
                .map_err(tok_err("text"))?
                .get_ids()
                .to_vec()),
        }
    }

    /// The text of `ids`, special tokens skipped.
    pub fn decode(&self, ids: &[u32]) -> String {
        match self {
            Self::Char(c) => c.decode(ids),
            Self::Hf(t) => t.decode(ids, true).unwrap_or_default(),
        }
    }

    /// The id of a special token.
    pub fn token_id(&self, token: &str) -> Option<u32> {
        match self {
            Self::Char(_) => None,
            Self::Hf(t) => t.token_to_id(token),
        }
    }

    /// The id of a special token the objective needs, or an error naming it.
    pub fn require(&self, token: &str) -> Result<u32> {
        self.token_id(token).ok_or_else(|| TrainError::Corpus {
            corpus: "tokenizer".into(),
            problem: format!("the vocabulary has no {token} token"),
        })
    }

    /// The `tokenizer.json` text (the `tokenizers` format; the character tokenizer as its
    /// alphabet).
    pub fn to_json(&self) -> Result<String> {
        Ok(match self {
            Self::Char(c) => serde_json::to_string(&serde_json::json!({ "char_tokenizer": c }))
                // INVARIANT: a string-keyed map of strings always serializes to JSON.
                .expect("serializes"),
            Self::Hf(t) => t.to_string(true).map_err(tok_err("tokenizer.json"))?,
        })
    }

    /// Writes `tokenizer.json` ([`TextTokenizer::to_json`]).
    pub fn save(&self, path: &Path) -> Result<()> {
        crate::checkpoint::write_atomic(path, self.to_json()?.as_bytes())
    }

    /// Reads a `tokenizer.json` written by [`TextTokenizer::save`] or by HuggingFace tools.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(io_err(path))?;
        let bad = |e: String| TrainError::Checkpoint {
            path: path.to_path_buf(),
            problem: format!("not a tokenizer: {e}"),
        };
        let json: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
        if let Some(c) = json.get("char_tokenizer") {
            return Ok(Self::Char(
                serde_json::from_value(c.clone()).map_err(|e| bad(e.to_string()))?,
            ));
        }
        let mut tok = text
            .parse::<tokenizers::Tokenizer>()
            .map_err(|e| bad(e.to_string()))?;
        // Padding and truncation are the trainer's (from the task's lengths), never the file's:
        // a sentence-transformers file pads every text to 128 ids.
        tok.with_padding(None);
        tok.with_truncation(None).map_err(|e| bad(e.to_string()))?;
        Ok(Self::Hf(Box::new(tok)))
    }
}

/// What `lm-data`'s prepare needs: ids of many texts at once, on all cores, with the byte
/// offset where each token starts.
impl lm_data::Encoder for TextTokenizer {
    fn encode_batch(&self, texts: &[&str]) -> std::result::Result<Vec<lm_data::Encoded>, String> {
        use rayon::prelude::*;
        match self {
            Self::Char(c) => texts
                .par_iter()
                .map(|t| {
                    let ids = c.encode(t).map_err(|ch| {
                        format!("character {ch:?} is not in the tokenizer's alphabet")
                    })?;
                    let starts = t.char_indices().map(|(i, _)| i as u32).collect();
                    Ok(lm_data::Encoded { ids, starts })
                })
                .collect(),
            Self::Hf(t) => {
                let added: Vec<String> = t
                    .get_added_tokens_decoder()
                    .into_values()
                    .map(|a| a.content)
                    .filter(|c| !c.is_empty())
                    .collect();
                // Names the tokenizer to the threads' word caches: ~1 % of a 2 MiB batch's time.
                let fingerprint =
                    lm_data::sha256_hex(t.to_string(false).map_err(|e| e.to_string())?.as_bytes());
                texts
                    .par_iter()
                    .map(|text| fast::encode_words(t, &fingerprint, &added, text))
                    .collect()
            }
        }
    }

    fn vocab_size(&self) -> usize {
        TextTokenizer::vocab_size(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn char_roundtrip_and_sorted_ids() {
        let t = CharTokenizer::fit("hello world");
        assert_eq!(t.vocab_size(), 8);
        assert_eq!(t.encode(" ").unwrap(), vec![0]);
        let ids = t.encode("held").unwrap();
        assert_eq!(t.decode(&ids), "held");
        assert_eq!(t.encode("hex"), Err('x'));
    }

    #[test]
    fn trained_tokenizers_have_their_special_tokens_and_roundtrip() {
        let text = include_str!("../../../data/tinyshakespeare.txt");
        let lines: Vec<&str> = text[..200_000].lines().collect();
        let dir = tempfile::tempdir().unwrap();
        for (kind, family, probe) in [
            (
                TokenizerKind::Bpe,
                Family::named("gpt").unwrap(),
                "<|endoftext|>",
            ),
            (
                TokenizerKind::Wordpiece,
                Family::named("bert").unwrap(),
                "[MASK]",
            ),
            (
                TokenizerKind::Unigram,
                Family::named("t5").unwrap(),
                "<extra_id_99>",
            ),
            (TokenizerKind::Bpe, Family::named("bart").unwrap(), "<mask>"),
        ] {
            let t = TextTokenizer::train(kind, family, 800, &lines).unwrap();
            assert!(
                t.vocab_size() <= 800 && t.vocab_size() > 200,
                "{kind:?}: {}",
                t.vocab_size()
            );
            let specials = special_tokens(family, kind);
            for (i, s) in specials.iter().enumerate() {
                assert_eq!(t.token_id(s), Some(i as u32), "{kind:?} {s}");
            }
            assert!(t.token_id(probe).is_some());
            let ids = t.encode("First Citizen: you are all resolved").unwrap();
            let back = t.decode(&ids);
            assert!(
                back.to_lowercase().contains("citizen") && back.contains("resolved"),
                "{kind:?}: {back}"
            );
            let path = dir.path().join(format!("{family}.json"));
            t.save(&path).unwrap();
            assert_eq!(
                TextTokenizer::load(&path)
                    .unwrap()
                    .encode("you are all")
                    .unwrap(),
                t.encode("you are all").unwrap()
            );
        }
    }

    /// The prepare path gives `encode`'s ids, and the same lines as `encode`'s offsets, for
    /// every kind of trained tokenizer on tinyshakespeare's documents — also documents holding
    /// a special token.
    #[test]
    fn documents_encode_as_encode_does() {
        use lm_data::Encoder;
        let text = &include_str!("../../../data/tinyshakespeare.txt")[..60_000];
        let lines: Vec<&str> = text.lines().collect();
        let mut docs: Vec<String> = crate::data::documents(text)
            .into_iter()
            .map(|d| d.concat())
            .collect();
        for (kind, family, special) in [
            (TokenizerKind::Bpe, "gpt", "<|endoftext|>"),
            (TokenizerKind::Wordpiece, "bert", "[SEP]"),
            (TokenizerKind::Unigram, "t5", "</s>"),
        ] {
            let t =
                TextTokenizer::train(kind, Family::named(family).unwrap(), 500, &lines).unwrap();
            docs.push(format!("two\n{special}  lines\n\n"));
            let TextTokenizer::Hf(hf) = &t else { panic!() };
            let texts: Vec<&str> = docs.iter().map(String::as_str).collect();
            let fast = t.encode_batch(&texts).unwrap();
            for (d, f) in docs.iter().zip(fast) {
                let e = hf.encode(d.as_str(), false).unwrap();
                assert_eq!(f.ids, e.get_ids(), "{kind:?}: {d:?}");
                let exact = lm_data::Encoded {
                    ids: e.get_ids().to_vec(),
                    starts: e.get_offsets().iter().map(|o| o.0 as u32).collect(),
                };
                assert_eq!(
                    f.into_sentences(d),
                    exact.into_sentences(d),
                    "{kind:?}: {d:?}"
                );
            }
            docs.pop();
        }
    }

    /// A trained T5 (Unigram) tokenizer reads line breaks, tabs and runs of spaces as one word
    /// boundary, as transformers' T5 tokenizer does (its normalizer maps them to a space and
    /// collapses spaces): no `<unk>` where the input breaks a line, and the text decodes back
    /// with spaces there.
    #[test]
    fn t5_reads_line_breaks_as_spaces() {
        let text = include_str!("../../../data/tinyshakespeare.txt");
        let lines: Vec<&str> = text[..100_000].lines().collect();
        let t = TextTokenizer::train(
            TokenizerKind::Unigram,
            Family::named("t5").unwrap(),
            400,
            &lines,
        )
        .unwrap();
        let unk = t.token_id("<unk>").unwrap();
        let broken = t
            .encode("First Citizen:\nBefore we\tproceed\r\n  any further")
            .unwrap();
        assert!(!broken.contains(&unk), "{broken:?}");
        assert_eq!(
            broken,
            t.encode("First Citizen: Before we proceed any further")
                .unwrap()
        );
        assert_eq!(
            t.decode(&broken),
            "First Citizen: Before we proceed any further"
        );
    }
}
