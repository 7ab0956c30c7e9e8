//! A fine-tuned model's predictions (class labels or generated text) and the task metrics on
//! them: validation, the test report with its baseline, and predictions for given examples.

use super::*;

impl FinetuneTask {
    /// Predictions for examples given by the user (`lm-train predict`): class labels or greedily
    /// generated text. A label unseen in training does not matter here (it is not predicted).
    /// Products at `precision`, no dropout.
    pub fn predict_examples(
        &self,
        (model, precision): (&dyn LanguageModel, MatmulPrecision),
        examples: &[Example],
        device: &Device,
    ) -> Result<Vec<String>> {
        let encoded: Vec<Encoded> = examples
            .iter()
            .map(|e| self.encode(e))
            .collect::<Result<_>>()?;
        let ids = self.predict_ids((model, precision), &encoded, device)?;
        Ok(ids.iter().map(|p| self.render(p)).collect())
    }

    /// Predictions as strings for split `split` (0 train, 1 validation, 2 test). With several
    /// ranks each predicts its share of the examples (`lm_dist::share`) and the shares are
    /// gathered, so every rank returns the whole list.
    pub(super) fn predict(
        &self,
        model: (&dyn LanguageModel, MatmulPrecision),
        split: usize,
        device: &Device,
        comm: &dyn Collective,
    ) -> Result<Vec<String>> {
        let items = &self.encoded[split];
        let mine = lm_dist::share(items.len(), comm.world_size(), comm.rank());
        let local = self.predict_ids(model, &items[mine.clone()], device)?;
        let all = gather_rows(comm, items.len(), mine, local)?;
        Ok(all.iter().map(|p| self.render(p)).collect())
    }

    /// A prediction's text: the class label of a classifier's index, else the decoded ids.
    pub(super) fn render(&self, ids: &[u32]) -> String {
        match (self.head, ids) {
            (Head::Classify, [class]) => self.labels[*class as usize].clone(),
            _ => self.tokenizer.decode(ids).trim().to_string(),
        }
    }

    /// Raw predictions: `[class index]` from a classifier, else greedily generated ids (without
    /// the end token).
    pub(super) fn predict_ids(
        &self,
        (model, precision): (&dyn LanguageModel, MatmulPrecision),
        items: &[Encoded],
        device: &Device,
    ) -> Result<Vec<Vec<u32>>> {
        let ctx = &StepContext::eval(precision);
        let mut out = Vec::with_capacity(items.len());
        let mut rng = Rng::seed_from_u64(0);
        let n = self.cfg.finetune.max_target_len;
        for chunk in items.chunks(32) {
            let refs: Vec<&Encoded> = chunk.iter().collect();
            match model.head() {
                ModelHead::Classifier(m) => {
                    let b = self.encoder_inputs(&refs, device)?;
                    let am: Vec<u32> = m.class_logits(&b, ctx)?.argmax(1)?.to_vec1()?;
                    out.extend(am.into_iter().map(|i| vec![i]));
                }
                // BART and T5 decode the whole chunk at once (padded, with its mask): the same
                // tokens as one row at a time (lm-models' generation test), several times faster.
                ModelHead::Seq2Seq(m) => {
                    let b = self.encoder_inputs(&refs, device)?;
                    let gen = m.generation_config(n);
                    out.extend(m.generate_batch(
                        (&b.input_ids, b.attention_mask.as_ref()),
                        &gen,
                        &Sampling::greedy(),
                        &mut rng,
                        precision,
                    )?);
                }
                ModelHead::Causal(m) => {
                    for e in chunk {
                        let room = self.context.saturating_sub(e.input.len());
                        let greedy = (&Sampling::greedy(), &mut rng);
                        let all = m.generate(&e.input, n.min(room), greedy, precision)?;
                        let gen = &all[e.input.len()..];
                        let end = gen.iter().position(|&t| t == self.ids.eos);
                        out.push(gen[..end.unwrap_or(gen.len())].to_vec());
                    }
                }
                ModelHead::Encoder => {
                    return Err(TrainError::Checkpoint {
                        path: PathBuf::from(&self.cfg.finetune.init),
                        problem: "a BERT model without a classifier cannot predict".into(),
                    })
                }
            }
        }
        Ok(out)
    }

    pub(super) fn gold(ex: &[Example]) -> Vec<String> {
        ex.iter()
            .map(|e| match e {
                Example::Pair { label, .. } | Example::Single { label, .. } => label.clone(),
                Example::TextToText { target, .. } => target.clone(),
            })
            .collect()
    }

    pub(super) fn score(&self, pred: &[String], gold: &[String]) -> BTreeMap<String, f64> {
        let mut m = BTreeMap::new();
        if self.is_classification() {
            m.insert("accuracy".into(), tasks::accuracy(pred, gold));
            m.insert("macro_f1".into(), tasks::macro_f1(pred, gold));
        } else {
            m.insert("exact_match".into(), tasks::exact_match(pred, gold));
            m.insert("token_f1".into(), tasks::token_f1(pred, gold));
        }
        m
    }

    /// The task's metrics on the validation examples (dropout off).
    /// Every rank of `comm` takes part and gets the same metrics.
    pub fn validate(
        &self,
        model: (&dyn LanguageModel, MatmulPrecision),
        device: &Device,
        comm: &dyn Collective,
    ) -> Result<BTreeMap<String, f64>> {
        let pred = self.predict(model, 1, device, comm)?;
        Ok(self.score(&pred, &Self::gold(&self.data.val)))
    }

    /// Test metrics of `model` (the best checkpoint's weights) against the trivial baseline;
    /// rank 0 of `comm` writes `results.json` and `test_predictions.txt` into `run_dir` (every
    /// rank takes part in the predictions).
    pub(crate) fn report(
        &self,
        model: (&dyn LanguageModel, MatmulPrecision),
        device: &Device,
        run_dir: &Path,
        steps: u64,
        best: (u64, f64, PathBuf),
        comm: &dyn Collective,
    ) -> Result<FinetuneResults> {
        let test_pred = self.predict(model, 2, device, comm)?;
        let test_gold = Self::gold(&self.data.test);
        let baseline_pred: Vec<String> = if self.is_classification() {
            let train_gold = Self::gold(&self.data.train);
            let majority = self
                .labels
                .iter()
                .max_by_key(|l| train_gold.iter().filter(|g| g == l).count())
                .cloned()
                .unwrap_or_default();
            vec![majority; test_gold.len()]
        } else {
            self.data
                .test
                .iter()
                .map(|e| match e {
                    Example::TextToText { input, .. } => input.clone(),
                    _ => String::new(),
                })
                .collect()
        };
        let samples: String = self
            .data
            .test
            .iter()
            .zip(&test_pred)
            .take(5)
            .map(|(e, p)| {
                format!(
                    "{}\n  => {p}\n",
                    serde_json::to_string(e).unwrap_or_default()
                )
            })
            .collect();
        let writer = comm.rank() == 0;
        if writer {
            write_atomic(&run_dir.join("test_predictions.txt"), samples.as_bytes())?;
        }
        let key = format!("val_{}", self.metric());
        let curve = crate::metrics::MetricsLog::read(&run_dir.join("metrics.jsonl"))?
            .into_iter()
            .filter_map(|r| r.metrics.get(&key).map(|&v| (r.step, v)))
            .collect();
        let results = FinetuneResults {
            task: self.cfg.finetune.task.to_string(),
            init: self.cfg.finetune.init.clone(),
            scratch: self.cfg.finetune.scratch,
            steps,
            metric: self.metric().into(),
            best_val: best.1,
            best_checkpoint: best.2.display().to_string(),
            test: self.score(&test_pred, &test_gold),
            baseline: self.score(&baseline_pred, &test_gold),
            fresh_tensors: self.fresh.clone(),
            curve,
        };
        if writer {
            // INVARIANT: a struct of numbers, strings and maps always serializes to JSON.
            let json = serde_json::to_string_pretty(&results).expect("results serialize");
            write_atomic(&run_dir.join("results.json"), json.as_bytes())?;
        }
        Ok(results)
    }
}

/// Every rank's rows in every rank: rank r holds rows `mine` of `n` (lengths may differ), and
/// all get the `n` rows in order. Two sums over the ranks carry them: the lengths, then the ids
/// in a `[n, longest]` table where each row is non-zero only in the rank that made it (ids are
/// integers below 2^24, exact in f32).
pub(super) fn gather_rows(
    comm: &dyn Collective,
    n: usize,
    mine: std::ops::Range<usize>,
    local: Vec<Vec<u32>>,
) -> Result<Vec<Vec<u32>>> {
    if comm.world_size() == 1 {
        return Ok(local);
    }
    // The lengths, and last how many ids each rank holds that f32 cannot carry exactly (every
    // rank learns of them, so all stop together instead of leaving the others waiting).
    const EXACT: u32 = 1 << 24;
    let mut lens = vec![0f32; n + 1];
    for (l, row) in lens[mine.clone()].iter_mut().zip(&local) {
        *l = row.len() as f32;
    }
    lens[n] = local.iter().flatten().filter(|&&id| id >= EXACT).count() as f32;
    comm.all_reduce_sum(&mut lens)?;
    if lens[n] > 0.0 {
        return Err(TrainError::Corpus {
            corpus: "data-parallel predictions".into(),
            problem: format!(
                "{} predicted ids are past 2^24, which f32 cannot carry exactly",
                lens[n]
            ),
        });
    }
    let lens = &lens[..n];
    let width = lens.iter().fold(0f32, |a, &b| a.max(b)) as usize;
    let mut table = vec![0f32; n * width];
    for (i, row) in mine.zip(&local) {
        for (t, &id) in table[i * width..].iter_mut().zip(row) {
            *t = id as f32;
        }
    }
    comm.all_reduce_sum(&mut table)?;
    Ok((0..n)
        .map(|i| {
            table[i * width..i * width + lens[i] as usize]
                .iter()
                .map(|&v| v as u32)
                .collect()
        })
        .collect())
}
