//! What the encoder-decoders (BART, T5) share: a teacher-forced forward pass and generation,
//! written once over their `encode` and `decode`.

use candle_core::Tensor;

use crate::context::{MatmulPrecision, StepContext};
use crate::layers::KvCache;
use crate::{Result, Sampling};

/// Generation settings, with transformers' names (`GenerationConfig`).
#[derive(Debug, Clone, PartialEq)]
pub struct GenerationConfig {
    /// Tokens generated at most per row.
    pub max_new_tokens: usize,
    /// The end token is not chosen before this many tokens.
    pub min_new_tokens: usize,
    /// The decoder's first input.
    pub decoder_start_token_id: u32,
    /// Generation of a row stops after this token.
    pub eos_token_id: u32,
    /// Fed to the rows that have finished.
    pub pad_token_id: u32,
    /// The token forced as the first one generated (mBART's language token, BART-large's `<s>`).
    pub forced_bos_token_id: Option<u32>,
    /// The token forced as the last one when `max_new_tokens` is reached (BART's `</s>`).
    pub forced_eos_token_id: Option<u32>,
    /// No n-gram of this size occurs twice in a row's decoder sequence (0: off).
    pub no_repeat_ngram_size: usize,
    /// CTRL's penalty on tokens already in the decoder sequence (1: off).
    pub repetition_penalty: f64,
}

impl GenerationConfig {
    /// The settings a model config implies: its start, end and padding tokens, and the
    /// generation keys its extra (pass-through) keys carry — `forced_bos_token_id`,
    /// `forced_eos_token_id`, `min_new_tokens` or `min_length` (which counts the decoder start
    /// token), `no_repeat_ngram_size`, `repetition_penalty` — read as transformers reads them.
    pub fn from_model_config(
        max_new_tokens: usize,
        decoder_start_token_id: u32,
        eos_token_id: u32,
        pad_token_id: u32,
        extra: &serde_json::Map<String, serde_json::Value>,
    ) -> Self {
        let int = |k: &str| extra.get(k).and_then(|v| v.as_u64());
        let min_length = int("min_length").map_or(0, |m| m.saturating_sub(1));
        GenerationConfig {
            max_new_tokens,
            min_new_tokens: int("min_new_tokens").unwrap_or(0).max(min_length) as usize,
            decoder_start_token_id,
            eos_token_id,
            pad_token_id,
            forced_bos_token_id: int("forced_bos_token_id").map(|v| v as u32),
            forced_eos_token_id: int("forced_eos_token_id").map(|v| v as u32),
            no_repeat_ngram_size: int("no_repeat_ngram_size").unwrap_or(0) as usize,
            repetition_penalty: extra
                .get("repetition_penalty")
                .and_then(|v| v.as_f64())
                .unwrap_or(1.0),
        }
    }

    /// transformers' logits processors for one row at generation step `step` (tokens generated
    /// so far), `history` its decoder sequence (start token and generated tokens), in
    /// transformers' order: repetition penalty, no-repeat n-gram, minimum length, forced first
    /// and last tokens.
    pub fn process(&self, row: &mut [f32], history: &[u32], step: usize) {
        crate::sampling::repetition_penalty(row, history, self.repetition_penalty);
        crate::sampling::ban_repeated_ngrams(row, history, self.no_repeat_ngram_size);
        if step < self.min_new_tokens {
            if let Some(v) = row.get_mut(self.eos_token_id as usize) {
                *v = f32::NEG_INFINITY;
            }
        }
        let forced = match (self.forced_bos_token_id, self.forced_eos_token_id) {
            (Some(b), _) if step == 0 => Some(b),
            (_, Some(e)) if step + 1 == self.max_new_tokens => Some(e),
            _ => None,
        };
        if let Some(f) = forced {
            for (i, v) in row.iter_mut().enumerate() {
                if i != f as usize {
                    *v = f32::NEG_INFINITY;
                }
            }
        }
    }
}

/// An encoder-decoder: `encode` the input once, then `decode` target positions against it (with a
/// KV cache when generating).
pub trait EncoderDecoder {
    /// Encoder states `[b, t, d]` for `input_ids` and an optional attention mask (1 = token).
    fn encode(
        &self,
        input_ids: &Tensor,
        attention_mask: Option<&Tensor>,
        ctx: &StepContext,
    ) -> Result<Tensor>;

    /// Decoder logits `[b, t, V]` for `decoder_input_ids` given encoder states. With a cache,
    /// only the new positions are passed and their keys and values are appended to it.
    fn decode(
        &self,
        decoder_input_ids: &Tensor,
        encoder: &Tensor,
        encoder_mask: Option<&Tensor>,
        cache: Option<&mut KvCache>,
        ctx: &StepContext,
    ) -> Result<Tensor>;

    /// The model's generation settings for `max_new_tokens` (its config's start, end, padding and
    /// forced end tokens).
    fn generation_config(&self, max_new_tokens: usize) -> GenerationConfig;

    /// Generates for a batch `[b, t]` of inputs (right-padded, with their attention mask), all
    /// rows decoded together with one KV cache: each row stops at the end token, and its logits
    /// go through `gen`'s processors ([`GenerationConfig::process`]: minimum length, forced
    /// first and last tokens, no-repeat n-grams, repetition penalty) before `sampling` picks.
    /// Returns each row's new tokens (the end token included when produced). Products at
    /// `precision`, no dropout.
    fn generate_batch(
        &self,
        inputs: (&Tensor, Option<&Tensor>),
        gen: &GenerationConfig,
        sampling: &Sampling,
        rng: &mut lm_objectives::Rng,
        precision: MatmulPrecision,
    ) -> Result<Vec<Vec<u32>>> {
        decode_rows(self, inputs, gen, (sampling, rng), true, precision)
    }

    /// Logits of a teacher-forced pass: `decode(decoder_input_ids, encode(input_ids))`.
    fn forward(
        &self,
        input_ids: &Tensor,
        attention_mask: Option<&Tensor>,
        decoder_input_ids: &Tensor,
        ctx: &StepContext,
    ) -> Result<Tensor> {
        let enc = self.encode(input_ids, attention_mask, ctx)?;
        self.decode(decoder_input_ids, &enc, attention_mask, None, ctx)
    }

    /// Generates up to `max_new_tokens` for one input (`[1, t]`) with the model's generation
    /// settings ([`EncoderDecoder::generation_config`]) — the batch's decoding, for one row; with
    /// `use_cache` false every step reruns the whole prefix (same tokens). Products at
    /// `precision`, no dropout.
    fn generate(
        &self,
        input_ids: &Tensor,
        max_new_tokens: usize,
        (sampling, rng): (&Sampling, &mut lm_objectives::Rng),
        use_cache: bool,
        precision: MatmulPrecision,
    ) -> Result<Vec<u32>> {
        let gen = self.generation_config(max_new_tokens);
        let mut rows = decode_rows(
            self,
            (input_ids, None),
            &gen,
            (sampling, rng),
            use_cache,
            precision,
        )?;
        Ok(rows.pop().unwrap_or_default())
    }
}

/// The one decoding loop of the encoder-decoders: encode once, then per step feed each row's
/// newest token (with the cache) or its whole decoder sequence (without), process the last
/// position's logits with `gen` and pick with `sampling`; finished rows are fed padding.
fn decode_rows<M: EncoderDecoder + ?Sized>(
    model: &M,
    (input_ids, attention_mask): (&Tensor, Option<&Tensor>),
    gen: &GenerationConfig,
    (sampling, rng): (&Sampling, &mut lm_objectives::Rng),
    use_cache: bool,
    precision: MatmulPrecision,
) -> Result<Vec<Vec<u32>>> {
    let ctx = &StepContext::eval(precision);
    let enc = model.encode(input_ids, attention_mask, ctx)?;
    let device = input_ids.device();
    let rows = input_ids.dim(0)?;
    // Each row's decoder sequence: the start token, then its tokens (padding once finished).
    let mut seqs = vec![vec![gen.decoder_start_token_id]; rows];
    let mut out: Vec<Vec<u32>> = vec![vec![]; rows];
    let mut done = vec![false; rows];
    let mut cache = KvCache::new();
    for step in 0..gen.max_new_tokens {
        let logits = if use_cache {
            let last: Vec<u32> = seqs.iter().map(|s| s[s.len() - 1]).collect();
            let ids = Tensor::new(last.as_slice(), device)?.unsqueeze(1)?;
            model.decode(&ids, &enc, attention_mask, Some(&mut cache), ctx)?
        } else {
            let ids = Tensor::new(seqs.concat(), device)?.reshape((rows, step + 1))?;
            model.decode(&ids, &enc, attention_mask, None, ctx)?
        };
        let t = logits.dim(1)?;
        let logits = logits
            .narrow(1, t - 1, 1)?
            .squeeze(1)?
            .to_dtype(candle_core::DType::F32)?;
        for r in 0..rows {
            let next = if done[r] {
                gen.pad_token_id
            } else {
                let mut row: Vec<f32> = logits.get(r)?.to_vec1()?;
                gen.process(&mut row, &seqs[r], step);
                let next = sampling.sample(&row, rng);
                out[r].push(next);
                done[r] = next == gen.eos_token_id;
                next
            };
            seqs[r].push(next);
        }
        if done.iter().all(|&d| d) {
            break;
        }
    }
    Ok(out)
}
