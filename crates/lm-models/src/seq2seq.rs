//! What the encoder-decoders (BART, T5) share: a teacher-forced forward pass and generation,
//! written once over their `encode` and `decode`.

use std::sync::atomic::{AtomicBool, Ordering};

use candle_core::Tensor;

use crate::layers::KvCache;
use crate::sampling::{decode_loop, Decode};
use crate::{Result, Sampling};

/// An encoder-decoder: `encode` the input once, then `decode` target positions against it (with a
/// KV cache when generating).
pub trait EncoderDecoder {
    /// Encoder states `[b, t, d]` for `input_ids` and an optional attention mask (1 = token).
    fn encode(&self, input_ids: &Tensor, attention_mask: Option<&Tensor>) -> Result<Tensor>;

    /// Decoder logits `[b, t, V]` for `decoder_input_ids` given encoder states. With a cache,
    /// only the new positions are passed and their keys and values are appended to it.
    fn decode(
        &self,
        decoder_input_ids: &Tensor,
        encoder: &Tensor,
        encoder_mask: Option<&Tensor>,
        cache: Option<&mut KvCache>,
    ) -> Result<Tensor>;

    /// The decoder's start token and the end-of-sequence token.
    fn decoder_start_and_eos(&self) -> (u32, u32);

    /// The model's dropout switch (generation turns it off for its duration).
    fn training_flag(&self) -> &AtomicBool;

    /// Logits of a teacher-forced pass: `decode(decoder_input_ids, encode(input_ids))`.
    fn forward(
        &self,
        input_ids: &Tensor,
        attention_mask: Option<&Tensor>,
        decoder_input_ids: &Tensor,
    ) -> Result<Tensor> {
        let enc = self.encode(input_ids, attention_mask)?;
        self.decode(decoder_input_ids, &enc, attention_mask, None)
    }

    /// Generates up to `max_new_tokens` for one input (`[1, t]`), starting from the decoder start
    /// token and stopping at EOS; with `use_cache` false every step reruns the whole prefix.
    fn generate(
        &self,
        input_ids: &Tensor,
        max_new_tokens: usize,
        sampling: &Sampling,
        rng: &mut lm_objectives::Rng,
        use_cache: bool,
    ) -> Result<Vec<u32>> {
        let was = self.training_flag().swap(false, Ordering::Relaxed);
        let (start, eos) = self.decoder_start_and_eos();
        let out = self.encode(input_ids, None).and_then(|enc| {
            let spec = Decode {
                start,
                eos,
                max_new_tokens,
                sampling,
                use_cache,
            };
            decode_loop(spec, rng, input_ids.device(), |ids, cache| {
                self.decode(ids, &enc, None, cache)
            })
        });
        self.training_flag().store(was, Ordering::Relaxed);
        out
    }
}
