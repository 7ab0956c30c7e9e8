//! Ids of whole documents for `lm-data`'s prepare, without building an `Encoding`.
//!
//! `Tokenizer::encode` returns an `Encoding`: per token its id, its string, type id, offsets,
//! word index and masks — most of its time on two cores goes to those allocations. A prepared
//! dataset needs the ids and which line each token starts in. This path runs the tokenizer's own
//! pieces — normalizer, pre-tokenizer, model — and keeps a per-thread cache from each
//! pre-tokenized word to its ids, so a word seen before costs one hash lookup. The ids are the
//! tokenizer's (`encode(text, false)`); each token is placed at the start of its pre-tokenized
//! word, which is the line it starts in unless a word spans a newline (only whitespace words can,
//! and their tokens then count to the line the word starts in). A text that holds one of the
//! tokenizer's added tokens goes through `encode`, which splits those out first.

use std::cell::RefCell;
use std::collections::HashMap;

use tokenizers::{
    Model, Normalizer, OffsetReferential, OffsetType, PreTokenizedString, PreTokenizer,
};

/// Words cached per thread at most; the cache is emptied when it grows past this.
const CACHE_WORDS: usize = 1 << 20;

thread_local! {
    static WORDS: RefCell<HashMap<String, Box<[u32]>>> = RefCell::new(HashMap::new());
}

/// `text`'s ids and the byte offset where each token's word starts.
pub(crate) fn encode_words(
    t: &tokenizers::Tokenizer,
    added: &[String],
    text: &str,
) -> Result<lm_data::Encoded, String> {
    if added.iter().any(|a| text.contains(a.as_str())) {
        let e = t.encode(text, false).map_err(|e| e.to_string())?;
        return Ok(lm_data::Encoded {
            ids: e.get_ids().to_vec(),
            starts: e.get_offsets().iter().map(|o| o.0 as u32).collect(),
        });
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
    WORDS.with(|cache| -> Result<(), String> {
        let mut cache = cache.borrow_mut();
        if cache.len() > CACHE_WORDS {
            cache.clear();
        }
        for (word, (start, _), _) in pre.get_splits(OffsetReferential::Original, OffsetType::Byte) {
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
            out.starts.extend(std::iter::repeat_n(start as u32, ids.len()));
        }
        Ok(())
    })?;
    Ok(out)
}
