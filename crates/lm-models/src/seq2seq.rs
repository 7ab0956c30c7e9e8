//! What the encoder-decoders (BART, T5) share: a teacher-forced forward pass and generation,
//! written once over their `encode` and `decode`.

use candle_core::Tensor;

use crate::context::{MatmulPrecision, StepContext};
use crate::layers::KvCache;
use crate::sampling::{decode_loop, Decode};
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
    /// The token forced as the last one when `max_new_tokens` is reached (BART's `</s>`).
    pub forced_eos_token_id: Option<u32>,
}

impl GenerationConfig {
    /// The settings a model config implies: its start, end and padding tokens, and
    /// `forced_eos_token_id` when its extra (pass-through) keys carry one.
    pub fn from_model_config(
        max_new_tokens: usize,
        decoder_start_token_id: u32,
        eos_token_id: u32,
        pad_token_id: u32,
        extra: &serde_json::Map<String, serde_json::Value>,
    ) -> Self {
        GenerationConfig {
            max_new_tokens,
            min_new_tokens: 0,
            decoder_start_token_id,
            eos_token_id,
            pad_token_id,
            forced_eos_token_id: extra
                .get("forced_eos_token_id")
                .and_then(|v| v.as_u64())
                .map(|v| v as u32),
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
    /// rows decoded together with one KV cache: each row stops at the end token, is forced to end
    /// on its last step when `forced_eos_token_id` is set, and cannot end before
    /// `min_new_tokens`. Returns each row's new tokens (the end token included when produced).
    /// Products at `precision`, no dropout.
    fn generate_batch(
        &self,
        (input_ids, attention_mask): (&Tensor, Option<&Tensor>),
        gen: &GenerationConfig,
        sampling: &Sampling,
        rng: &mut lm_objectives::Rng,
        precision: MatmulPrecision,
    ) -> Result<Vec<Vec<u32>>> {
        let ctx = &StepContext::eval(precision);
        self.encode(input_ids, attention_mask, ctx).and_then(|enc| {
            let rows = input_ids.dim(0)?;
            let mut out: Vec<Vec<u32>> = vec![vec![]; rows];
            let mut last = vec![gen.decoder_start_token_id; rows];
            let mut done = vec![false; rows];
            let mut cache = KvCache::new();
            for step in 0..gen.max_new_tokens {
                let ids = Tensor::new(last.as_slice(), input_ids.device())?.unsqueeze(1)?;
                let logits = self.decode(&ids, &enc, attention_mask, Some(&mut cache), ctx)?;
                let logits = logits.squeeze(1)?.to_dtype(candle_core::DType::F32)?;
                for r in 0..rows {
                    if done[r] {
                        continue;
                    }
                    let mut row: Vec<f32> = logits.get(r)?.to_vec1()?;
                    if step < gen.min_new_tokens {
                        row[gen.eos_token_id as usize] = f32::NEG_INFINITY;
                    }
                    if let Some(f) = gen
                        .forced_eos_token_id
                        .filter(|_| step + 1 == gen.max_new_tokens)
                    {
                        for (i, v) in row.iter_mut().enumerate() {
                            if i != f as usize {
                                *v = f32::NEG_INFINITY;
                            }
                        }
                    }
                    let next = sampling.sample(&row, rng);
                    out[r].push(next);
                    last[r] = next;
                    done[r] = next == gen.eos_token_id;
                }
                for (l, &d) in last.iter_mut().zip(&done) {
                    if d {
                        *l = gen.pad_token_id;
                    }
                }
                if done.iter().all(|&d| d) {
                    break;
                }
            }
            Ok(out)
        })
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

    /// Generates up to `max_new_tokens` for one input (`[1, t]`), starting from the decoder start
    /// token and stopping at EOS; with `use_cache` false every step reruns the whole prefix.
    /// Products at `precision`, no dropout.
    fn generate(
        &self,
        input_ids: &Tensor,
        max_new_tokens: usize,
        (sampling, rng): (&Sampling, &mut lm_objectives::Rng),
        use_cache: bool,
        precision: MatmulPrecision,
    ) -> Result<Vec<u32>> {
        let ctx = &StepContext::eval(precision);
        let gen = self.generation_config(max_new_tokens);
        self.encode(input_ids, None, ctx).and_then(|enc| {
            let spec = Decode {
                start: gen.decoder_start_token_id,
                eos: gen.eos_token_id,
                max_new_tokens,
                sampling,
                use_cache,
            };
            decode_loop(spec, rng, input_ids.device(), |ids, cache| {
                self.decode(ids, &enc, None, cache, ctx)
            })
        })
    }
}
