//! The character-level tokenizer of the small demo: one id per distinct character, sorted.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{io_err, Result, TrainError};

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

    /// Writes the tokenizer as JSON.
    pub fn save(&self, path: &Path) -> Result<()> {
        let json = serde_json::to_string(self).expect("a list of chars serializes");
        crate::checkpoint::write_atomic(path, json.as_bytes())
    }

    /// Reads a tokenizer written by [`CharTokenizer::save`].
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(io_err(path))?;
        serde_json::from_str(&text).map_err(|e| TrainError::Checkpoint {
            path: path.to_path_buf(),
            problem: format!("not a character tokenizer: {e}"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_and_sorted_ids() {
        let t = CharTokenizer::fit("hello world");
        assert_eq!(t.vocab_size(), 8);
        assert_eq!(t.encode(" ").unwrap(), vec![0]);
        let ids = t.encode("held").unwrap();
        assert_eq!(t.decode(&ids), "held");
        assert_eq!(t.encode("hex"), Err('x'));
    }
}
