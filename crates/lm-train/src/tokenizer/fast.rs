//! Ids of whole documents for `lm-data`'s prepare, without building an `Encoding`.
//!
//! `Tokenizer::encode` returns an `Encoding`: per token its id, its string, type id, offsets,
//! word index and masks — most of its time on two cores goes to those allocations. A prepared
//! dataset needs the ids and which line each token starts in. This path runs the tokenizer's own
//! pieces — normalizer, pre-tokenizer, model — with a cache per thread from each pre-tokenized
//! word to its ids (emptied when another tokenizer, told by the SHA-256 of its JSON, uses the
//! thread), so a word seen before costs one hash lookup. The ids are the
//! tokenizer's (`encode(text, false)`); each token is placed at the start of its pre-tokenized
//! word, which is the line it starts in unless the word spans a newline ("\n\n" is one word to
//! GPT-2's byte-level pre-tokenizer): such a word is tokenized afresh and its tokens placed by
//! their lengths, where each of its characters stands for one byte of the text (byte-level
//! tokenizers); otherwise, and for a text holding one of the tokenizer's added tokens, the text
//! goes through `encode`.

use std::cell::RefCell;
use std::collections::HashMap;

use tokenizers::{
    Model, Normalizer, OffsetReferential, OffsetType, PreTokenizedString, PreTokenizer,
};

/// Words a cache holds at most; it is emptied when it grows past this.
const CACHE_WORDS: usize = 1 << 20;

/// Pre-tokenized words and their ids, of the tokenizer with this fingerprint.
type WordCache = (String, HashMap<String, Box<[u32]>>);

thread_local! {
    static WORDS: RefCell<WordCache> = RefCell::default();
}

/// `text`'s ids and the byte offset where each token starts. `fingerprint` names `t` (the
/// SHA-256 of its JSON): the thread's cache is `t`'s only while it matches.
pub(crate) fn encode_words(
    t: &tokenizers::Tokenizer,
    fingerprint: &str,
    added: &[String],
    text: &str,
) -> Result<lm_data::Encoded, String> {
    if added.iter().any(|a| text.contains(a.as_str())) {
        return exact(t, text);
    }
    let mut normalized = tokenizers::NormalizedString::from(text);
    if let Some(n) = t.get_normalizer() {
        n.normalize(&mut normalized).map_err(|e| e.to_string())?;
    }
    let mut pre = PreTokenizedString::from(normalized);
    if let Some(p) = t.get_pre_tokenizer() {
        p.pre_tokenize(&mut pre).map_err(|e| e.to_string())?;
    }
    let model = t.get_model();
    let mut out = lm_data::Encoded {
        ids: Vec::with_capacity(text.len() / 3),
        starts: Vec::with_capacity(text.len() / 3),
    };
    let placed = WORDS.with(|words| -> Result<bool, String> {
        let mut words = words.borrow_mut();
        let (owner, cache) = &mut *words;
        if owner != fingerprint || cache.len() > CACHE_WORDS {
            cache.clear();
            fingerprint.clone_into(owner);
        }
        for (word, (start, end), _) in pre.get_splits(OffsetReferential::Original, OffsetType::Byte)
        {
            let inner_newline = text
                .get(start..end.saturating_sub(1))
                .is_some_and(|w| w.contains('\n'));
            if inner_newline {
                // Place each token by its length: one character per byte of the text.
                let tokens = model.tokenize(word).map_err(|e| e.to_string())?;
                let chars: usize = tokens.iter().map(|t| t.value.chars().count()).sum();
                if chars != end - start {
                    return Ok(false);
                }
                let mut at = start;
                for tok in tokens {
                    out.ids.push(tok.id);
                    out.starts.push(at as u32);
                    at += tok.value.chars().count();
                }
                continue;
            }
            let ids = match cache.get(word) {
                Some(ids) => ids,
                None => {
                    let ids: Box<[u32]> = model
                        .tokenize(word)
                        .map_err(|e| e.to_string())?
                        .iter()
                        .map(|tok| tok.id)
                        .collect();
                    cache.entry(word.to_string()).or_insert(ids)
                }
            };
            out.ids.extend_from_slice(ids);
            out.starts
                .extend(std::iter::repeat_n(start as u32, ids.len()));
        }
        Ok(true)
    })?;
    match placed {
        true => Ok(out),
        false => exact(t, text),
    }
}

/// `encode`'s ids and token offsets.
fn exact(t: &tokenizers::Tokenizer, text: &str) -> Result<lm_data::Encoded, String> {
    let e = t.encode(text, false).map_err(|e| e.to_string())?;
    Ok(lm_data::Encoded {
        ids: e.get_ids().to_vec(),
        starts: e.get_offsets().iter().map(|o| o.0 as u32).collect(),
    })
}
