//! Evaluation, samples and predictions of a run, and scoring text under a causal LM.

use super::*;
use candle_core::recompute::no_grad;

/// f32 products: samples and scores are read at full precision, whatever the run trained at.
const F32: MatmulPrecision = MatmulPrecision::Highest;

impl Trainer {
    /// Mean loss over the fixed evaluation batches of `split`, dropout off, no graph recorded
    /// (each activation freed once used).
    pub fn evaluate_split(&mut self, split: Split) -> Result<f32> {
        on_compute_threads(|| no_grad(|| self.evaluate_split_inner(split)))
    }

    pub(super) fn evaluate_split_inner(&mut self, split: Split) -> Result<f32> {
        let ctx = &StepContext::eval(self.matmul_precision());
        let t = self.cfg.train();
        let global = t.batch_size * self.strategy.world_size();
        let rows = lm_dist::share(global, self.strategy.world_size(), self.strategy.rank());
        let mut sum = 0f32;
        for i in 0..t.eval_iters {
            let key = (1 << 40) + i as u64;
            let share = Share {
                batch: self
                    .work
                    .batch(split, key, global, rows.clone(), &self.device)?,
                first_row: rows.start,
                global_rows: global,
            };
            let (w, _) = self.share_weights(&share)?;
            sum += self
                .model
                .weighted_loss(&share.batch, w, ctx)?
                .to_scalar::<f32>()?;
        }
        if self.strategy.world_size() > 1 {
            sum = self.strategy.sum(sum as f64)? as f32;
        }
        Ok(sum / t.eval_iters as f32)
    }

    /// (train, val) evaluation losses.
    pub fn evaluate(&mut self) -> Result<(f32, f32)> {
        Ok((
            self.evaluate_split(Split::Train)?,
            self.evaluate_split(Split::Val)?,
        ))
    }

    /// Loss estimates on both splits and, when fine-tuning, the task's validation metrics.
    pub fn evaluate_all(&mut self) -> Result<Evaluation> {
        let (train_loss, val_loss) = self.evaluate()?;
        let metrics = match &self.work {
            Work::Pretrain(_) => BTreeMap::new(),
            Work::Finetune(task) => {
                let model = (self.model.as_ref(), self.matmul_precision());
                let (device, comm) = (&self.device, self.strategy.comm());
                let m = on_compute_threads(|| no_grad(|| task.validate(model, device, comm)));
                m?.into_iter()
                    .map(|(k, v)| (format!("val_{k}"), v))
                    .collect()
            }
        };
        Ok(Evaluation {
            train_loss,
            val_loss,
            metrics,
        })
    }

    /// The value that selects the best checkpoint, and whether higher is better: the validation
    /// loss in pretraining, the task's validation metric in fine-tuning.
    pub(super) fn selection(&self, e: &Evaluation) -> (f64, bool) {
        match &self.work {
            Work::Pretrain(_) => (e.val_loss as f64, false),
            Work::Finetune(task) => {
                let key = format!("val_{}", task.metric());
                (e.metrics.get(&key).copied().unwrap_or(f64::NAN), true)
            }
        }
    }

    /// A sample from the model at the end of training: GPT continues a newline (nanoGPT's
    /// `sample.py`: temperature 0.8, top-k 200); BART and T5 decode the first validation example,
    /// shown with its input. BERT has no generation and gives `None`.
    pub fn sample(&self, n_tokens: usize, seed: u64) -> Result<Option<String>> {
        let sampling = Sampling {
            temperature: 0.8,
            top_k: Some(200),
            top_p: None,
        };
        self.sample_with(None, n_tokens, &sampling, seed)
    }

    /// Generated text: GPT continues `prompt` (default a newline) and the result starts with the
    /// prompt; BART and T5 take `prompt` as the encoder's input (default the first validation
    /// example) and show input and output. BERT gives `None`. Products in f32.
    pub fn sample_with(
        &self,
        prompt: Option<&str>,
        n_tokens: usize,
        sampling: &Sampling,
        seed: u64,
    ) -> Result<Option<String>> {
        let mut rng = Rng::seed_from_u64(seed);
        let show = |ids: &[u32]| match &self.tokenizer {
            TextTokenizer::Hf(t) => t.decode(ids, false).unwrap_or_default(),
            other => other.decode(ids),
        };
        Ok(match self.model.head() {
            Head::Causal(m) => {
                // A given prompt must encode (a character outside a char vocabulary is an
                // error); the default newline falls back to the end-of-text token.
                let ids = match prompt {
                    Some(p) => self.tokenizer.encode(p)?,
                    None => self.tokenizer.encode("\n").unwrap_or_default(),
                };
                let prompt_ids = if ids.is_empty() { vec![self.eos] } else { ids };
                // No graph: the cache's keys and values would otherwise hold every step's.
                let ids = no_grad(|| m.generate(&prompt_ids, n_tokens, (sampling, &mut rng), F32))?;
                let continuation = self.tokenizer.decode(&ids[prompt_ids.len()..]);
                Some(format!("{}{continuation}", prompt.unwrap_or("")))
            }
            Head::Seq2Seq(m) => {
                let input: Vec<u32> = match prompt {
                    Some(p) => {
                        let mut ids = self.tokenizer.encode(p)?;
                        ids.push(self.eos);
                        ids
                    }
                    None => self
                        .work
                        .batch(Split::Val, 1 << 40, 1, 0..1, &self.device)?
                        .input_ids
                        .flatten_all()?
                        .to_vec1()?,
                };
                let input_t = Tensor::new(input.as_slice(), &self.device)?.unsqueeze(0)?;
                let out =
                    no_grad(|| m.generate(&input_t, n_tokens, (sampling, &mut rng), true, F32))?;
                Some(format!("input:  {}\noutput: {}", show(&input), show(&out)))
            }
            Head::Classifier(_) | Head::Encoder => None,
        })
    }

    /// A fine-tuned run's predictions for `examples` (class labels or generated text), with its
    /// task's encoding; `None` for a pretraining run.
    pub fn predict(&self, examples: &[crate::tasks::Example]) -> Result<Option<Vec<String>>> {
        let Work::Finetune(task) = &self.work else {
            return Ok(None);
        };
        let model = (self.model.as_ref(), self.matmul_precision());
        let device = &self.device;
        on_compute_threads(|| no_grad(|| task.predict_examples(model, examples, device))).map(Some)
    }
}

/// Per-token negative log-likelihood (nats) of `text` under a causal LM: a run directory (its
/// newest checkpoint), a checkpoint directory, or a HuggingFace GPT-2 directory with a
/// `tokenizer.json`. Returns each predicted token's text and NLL (the first token has no context
/// and is not scored).
pub fn score_text(dir: &Path, text: &str, device: &Device) -> Result<Vec<(String, f32)>> {
    let model_ref = crate::model_ref::ModelRef::parse(dir)?;
    let ckpt = model_ref.weights_dir()?;
    let tok_path = model_ref.tokenizer_file()?;
    let tokenizer = TextTokenizer::load(&tok_path)?;
    let (model, _) = lm_models::gpt::Gpt::from_hf_dir(&ckpt, device)?;
    let vocab = model.config().vocab_size;
    if tokenizer.vocab_size() != vocab {
        return Err(TrainError::Checkpoint {
            path: tok_path,
            problem: format!(
                "has {} tokens but the model's vocabulary has {vocab}: it is not this model's tokenizer",
                tokenizer.vocab_size()
            ),
        });
    }
    let ids = tokenizer.encode(text)?;
    if ids.len() < 2 {
        return Err(TrainError::Corpus {
            corpus: "text to score".into(),
            problem: format!("{} token(s); scoring needs at least 2", ids.len()),
        });
    }
    // The first context-length window scores its tokens in one pass; each later token is scored
    // with the context-length window that ends just before it.
    let ctx = model.config().n_positions;
    let logp_of = |window: &[u32]| -> Result<Vec<Vec<f32>>> {
        let logits = model
            .forward(
                &Tensor::new(window, device)?.unsqueeze(0)?,
                &StepContext::EVAL,
            )?
            .squeeze(0)?;
        Ok(
            lm_objectives::loss::log_softmax_last_dim(&logits.to_dtype(candle_core::DType::F32)?)?
                .to_vec2()?,
        )
    };
    // No graph: each window's activations are freed as the pass goes.
    let logp = |window: &[u32]| no_grad(|| logp_of(window));
    let first = logp(&ids[..ids.len().min(ctx)])?;
    let mut out: Vec<(String, f32)> = (1..ids.len().min(ctx))
        .map(|i| {
            (
                tokenizer.decode(&ids[i..i + 1]),
                -first[i - 1][ids[i] as usize],
            )
        })
        .collect();
    for i in ctx..ids.len() {
        let rows = logp(&ids[i - ctx..i])?;
        out.push((
            tokenizer.decode(&ids[i..i + 1]),
            -rows[ctx - 1][ids[i] as usize],
        ));
    }
    Ok(out)
}
