//! Batches for each family, built through lm-objectives from the tokenized corpus.
//!
//! A batch is a pure function of (seed, split, key): training uses the step (and micro-batch)
//! as the key, evaluation a fixed set of keys. So a resumed run draws exactly the batches the
//! uninterrupted one would have, batches can be prepared ahead on another thread, and a
//! data-parallel backend can shard by giving each rank its own keys.

use std::sync::Arc;

use candle_core::{Device, Tensor};
use lm_objectives::bart::{BartNoise, InfillingConfig};
use lm_objectives::causal::{prefix_lm_window, window_at};
use lm_objectives::collate::{pad_batch, pad_labels, shift_right};
use lm_objectives::mlm::{MlmConfig, MlmExample, MlmMasker};
use lm_objectives::nsp::{full_sentences, next_sentence_pairs, Document, NspConfig, NspExample};
use lm_objectives::span_corruption::{
    random_prefix_lm, Sentinels, SpanCorruptionConfig, SpanCorruptor,
};
use lm_objectives::Rng;

use crate::config::TrainConfig;
use crate::config::{Family, ObjectiveKind};
use crate::data::{Dataset, Split, SplitView};
use crate::error::{Result, TrainError};
use crate::family::{Architecture, DecoderStart, MaskedLmInput};
use crate::model::{labels_tensor, Batch};
use crate::tokenizer::{TextTokenizer, TokenizerKind};

pub use crate::family::Specials;

impl Specials {
    /// Looks up `family`'s special tokens in the tokenizer (none for a character vocabulary).
    pub fn of(family: Family, tok: &TextTokenizer, kind: TokenizerKind) -> Result<Self> {
        family.specials(&|t| tok.require(t), kind)
    }
}

/// Documents read for one example of the document-level objectives (BERT's NSP pairs,
/// RoBERTa's FULL-SENTENCES blocks, BART's sentence chunks): a random run of this many
/// consecutive documents of the split, through the reference construction, of which the example
/// takes one at random. So a run's start and an example's cost do not grow with the dataset
/// (before, every pair, block or chunk of the split was built when the run started). An NSP
/// pair's random next segment comes from another document of the run.
pub const REGION_DOCS: usize = 128;

/// The examples one region of documents gives.
enum Region {
    /// NSP pairs (BERT).
    Pairs(Vec<NspExample>),
    /// Packed sequences (RoBERTa).
    Blocks(Vec<Vec<u32>>),
    /// Chunks of whole sentences (BART).
    Chunks(Vec<Document>),
}

impl Region {
    fn len(&self) -> usize {
        match self {
            Region::Pairs(p) => p.len(),
            Region::Blocks(b) => b.len(),
            Region::Chunks(c) => c.len(),
        }
    }
}

/// One dataset of a run and its weight in the mixture.
#[derive(Debug)]
struct Source {
    corpus: Arc<Dataset>,
    weight: f64,
}

/// Builds the batches of a run.
#[derive(Debug)]
pub struct BatchSource {
    family: Family,
    objective: ObjectiveKind,
    sources: Vec<Source>,
    block: usize,
    raw_len: usize,
    seed: u64,
    vocab: u32,
    specials: Specials,
    cfg: TrainConfig,
}

fn split_index(split: Split) -> usize {
    match split {
        Split::Train => 0,
        Split::Val => 1,
    }
}

/// Consecutive whole sentences of each document, chunked to at most `max` tokens.
fn sentence_chunks(docs: &[Document], max: usize) -> Vec<Document> {
    let mut out = vec![];
    for doc in docs {
        let mut cur: Document = vec![];
        let mut len = 0;
        for s in doc.iter().filter(|s| !s.is_empty()) {
            let s: Vec<u32> = s.iter().take(max).copied().collect();
            if len + s.len() > max && !cur.is_empty() {
                out.push(std::mem::take(&mut cur));
                len = 0;
            }
            len += s.len();
            cur.push(s);
        }
        if !cur.is_empty() {
            out.push(cur);
        }
    }
    out
}

/// The examples of documents `docs` of `view` for `cfg`'s document-level objective.
fn region(
    cfg: &TrainConfig,
    specials: &Specials,
    view: &SplitView,
    docs: std::ops::Range<usize>,
    rng: &mut Rng,
) -> Result<Region> {
    let block = cfg.model.block_size;
    let docs: Vec<Document> = docs.map(|d| view.document(d)).collect();
    Ok(
        match (cfg.objective_kind(), cfg.model.family.masked_lm_input) {
            (ObjectiveKind::MaskedLm, MaskedLmInput::NspPairs) => {
                let nsp = NspConfig {
                    max_len: block,
                    is_next_prob: 0.5,
                    cls: specials.bos,
                    sep: specials.sep,
                };
                Region::Pairs(next_sentence_pairs(&docs, &nsp, rng)?)
            }
            (ObjectiveKind::MaskedLm, MaskedLmInput::FullSentences) => Region::Blocks(
                full_sentences(&docs, block, specials.bos, specials.eos, specials.sep)?,
            ),
            _ => Region::Chunks(sentence_chunks(&docs, block - 1)),
        },
    )
}

/// The run's data as errors name it: the dataset's directory, or the corpus.
fn data_name(cfg: &TrainConfig) -> String {
    cfg.data
        .dataset
        .clone()
        .unwrap_or_else(|| cfg.data.corpus.clone())
}

impl BatchSource {
    /// Prepares the example pools of both splits of `corpus` for `cfg`'s family.
    pub fn new(
        cfg: &TrainConfig,
        corpus: Arc<Dataset>,
        specials: Specials,
        vocab: usize,
    ) -> Result<Self> {
        Self::mixture(cfg, vec![(corpus, 1.0)], specials, vocab)
    }

    /// A deterministic mixture of `sources` (datasets of one tokenizer) by weight: each global
    /// batch takes from source s ⌊w_s·G⌋ or ⌈w_s·G⌉ of its G examples (largest remainders;
    /// weights are normalized), placed at rows shuffled by the batch's key.
    pub fn mixture(
        cfg: &TrainConfig,
        sources: Vec<(Arc<Dataset>, f64)>,
        specials: Specials,
        vocab: usize,
    ) -> Result<Self> {
        let mut built = Vec::with_capacity(sources.len());
        let mut id = 0u64;
        let single = sources.len() == 1;
        for (corpus, weight) in sources {
            // Errors name the config's corpus or dataset, or the mixture's source.
            let name = match single {
                true => data_name(cfg),
                false => corpus.dir().display().to_string(),
            };
            Self::check_splits(cfg, &corpus, &specials, &name)?;
            id = id.rotate_left(17) ^ corpus.content_id();
            if !built.is_empty() || weight != 1.0 {
                id ^= weight.to_bits();
            }
            built.push(Source { corpus, weight });
        }
        if built.is_empty()
            || built
                .iter()
                .any(|s| !(s.weight > 0.0 && s.weight.is_finite()))
        {
            return Err(TrainError::Corpus {
                corpus: data_name(cfg),
                problem: "a mixture needs at least one source, each with a positive weight".into(),
            });
        }
        let objective = cfg.objective_kind();
        Ok(Self {
            family: cfg.model.family,
            objective,
            sources: built,
            block: cfg.model.block_size,
            raw_len: Self::raw_len(cfg)?,
            // The order of batches is a function of the data as well as the seed.
            seed: cfg.train.seed ^ id,
            vocab: vocab as u32,
            specials,
            cfg: cfg.clone(),
        })
    }

    /// Tokens a window is cut to before its objective: T5's raw span-corruption length, else
    /// the block.
    fn raw_len(cfg: &TrainConfig) -> Result<usize> {
        let block = cfg.model.block_size;
        Ok(match cfg.objective_kind() {
            ObjectiveKind::SpanCorruption => {
                SpanCorruptionConfig {
                    noise_density: cfg.objective.noise_density,
                    mean_span_length: cfg.objective.mean_span_length,
                }
                .raw_length_for_inputs(block)?
                .0
            }
            _ => block,
        })
    }

    /// Refuses `corpus` when a split cannot give an example: a token stream shorter than one
    /// window, or a first region of documents that gives no pair, block or chunk.
    fn check_splits(
        cfg: &TrainConfig,
        corpus: &Dataset,
        specials: &Specials,
        name: &str,
    ) -> Result<()> {
        let block = cfg.model.block_size;
        let raw_len = Self::raw_len(cfg)?;
        for (split, split_name) in [(Split::Train, "train"), (Split::Val, "validation")] {
            let view = corpus.split(split);
            let examples = match cfg.objective_kind() {
                ObjectiveKind::MaskedLm | ObjectiveKind::Denoising => {
                    let mut rng = Rng::seed_from_u64(cfg.train.seed ^ 0x9A17);
                    let docs = 0..view.num_documents().min(REGION_DOCS);
                    region(cfg, specials, view, docs, &mut rng)
                        .map_err(|e| TrainError::Corpus {
                            corpus: name.to_string(),
                            problem: format!("{split:?} split: {e}"),
                        })?
                        .len()
                }
                _ => usize::from(view.len() > raw_len + 1),
            };
            if examples == 0 {
                return Err(TrainError::Corpus {
                    corpus: name.to_string(),
                    problem: format!("{} tokens is shorter than one block: the {split_name} split has no example of block_size = {block}", view.len()),
                });
            }
        }
        Ok(())
    }

    /// A random region of [`REGION_DOCS`] consecutive documents of source `src`'s split and
    /// its examples.
    fn region(&self, src: usize, split: Split, rng: &mut Rng) -> Result<Region> {
        let view = self.stream(src, split);
        let n = view.num_documents();
        let r = n.min(REGION_DOCS);
        let start = rng.below((n - r + 1) as u64) as usize;
        for d in start..start + r {
            self.check_ids(src, &view.tokens(view.document_range(d)))?;
        }
        let examples = region(&self.cfg, &self.specials, view, start..start + r, rng)?;
        if examples.len() == 0 {
            return Err(TrainError::Corpus {
                corpus: data_name(&self.cfg),
                problem: format!(
                    "{split:?} split: documents {start}..{} give no {} example",
                    start + r,
                    self.objective
                ),
            });
        }
        Ok(examples)
    }

    /// The number of examples each source gives a global batch of `global`: ⌊w·G⌋, plus one
    /// for the largest remainders (ties to the first source), so each is within one of w·G.
    pub fn source_counts(&self, global: usize) -> Vec<usize> {
        let total: f64 = self.sources.iter().map(|s| s.weight).sum();
        let quota: Vec<f64> = self
            .sources
            .iter()
            .map(|s| s.weight / total * global as f64)
            .collect();
        let mut counts: Vec<usize> = quota.iter().map(|q| q.floor() as usize).collect();
        let mut order: Vec<usize> = (0..quota.len()).collect();
        order.sort_by(|&a, &b| {
            (quota[b] - quota[b].floor()).total_cmp(&(quota[a] - quota[a].floor()))
        });
        let missing = global.saturating_sub(counts.iter().sum());
        for &s in order.iter().take(missing) {
            counts[s] += 1;
        }
        counts
    }

    /// The source of each row of global batch `key`: [`BatchSource::source_counts`] rows each,
    /// shuffled by the batch's own random stream.
    fn row_sources(&self, split: Split, key: u64, global: usize) -> Vec<usize> {
        if self.sources.len() == 1 {
            return vec![0; global];
        }
        let mut rows: Vec<usize> = self
            .source_counts(global)
            .iter()
            .enumerate()
            .flat_map(|(s, &n)| std::iter::repeat_n(s, n))
            .collect();
        let mut rng = self.example_rng(split, key, usize::MAX);
        for i in (1..rows.len()).rev() {
            rows.swap(i, rng.below(i as u64 + 1) as usize);
        }
        rows
    }

    fn stream(&self, src: usize, split: Split) -> &SplitView {
        self.sources[src].corpus.split(split)
    }

    /// The random stream of example `row` of the global batch `key`: a function of (the
    /// dataset's content, seed, split, key, row) only, so that a rank builds its rows alone and
    /// any number of ranks builds the same global batch.
    fn example_rng(&self, split: Split, key: u64, row: usize) -> Rng {
        Rng::seed_from_u64(
            self.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15)
                ^ (split_index(split) as u64) << 62
                ^ key.wrapping_mul(0xD1B5_4A32_D192_ED03)
                ^ (row as u64).wrapping_mul(0x94D0_49BB_1331_11EB),
        )
    }

    /// Tokens of input per example (the context length).
    pub fn block_size(&self) -> usize {
        self.block
    }

    fn masker(&self, rng: &mut Rng) -> Result<MlmMasker> {
        let ob = &self.cfg.objective;
        let mlm = MlmConfig {
            rate: ob.mlm_rate,
            selection: ob.mlm_selection.into(),
            ..Default::default()
        };
        Ok(MlmMasker::new(
            mlm,
            self.vocab,
            self.specials.mask,
            &self.specials.all,
            rng.next_u64(),
        )?)
    }

    /// Rows `rows` of the global batch of `key` in `split`, of `global` rows (each example from
    /// its source, `row_sources`, drawn by its own random stream,
    /// `example_rng`).
    pub fn batch(
        &self,
        split: Split,
        key: u64,
        global: usize,
        rows: std::ops::Range<usize>,
        device: &Device,
    ) -> Result<Batch> {
        let sources = self.row_sources(split, key, global.max(rows.end));
        let mut rows: Vec<(usize, Rng)> = rows
            .map(|i| (sources[i], self.example_rng(split, key, i)))
            .collect();
        let rows = rows.as_mut_slice();
        match (self.objective, self.family.architecture) {
            (ObjectiveKind::CausalLm, _) => self.decoder_batch(split, rows, false, device),
            (ObjectiveKind::SpanCorruption, _) => self.span_batch(split, rows, device),
            (ObjectiveKind::PrefixLm, Architecture::DecoderOnly) => {
                self.decoder_batch(split, rows, true, device)
            }
            (ObjectiveKind::PrefixLm, _) => self.seq2seq_prefix_batch(split, rows, device),
            (ObjectiveKind::MaskedLm, _) => self.masked_batch(split, rows, device),
            (ObjectiveKind::Denoising, _) => self.denoising_batch(split, rows, device),
        }
    }

    /// Refuses ids at or above the vocabulary size: what a damaged shard whose checksum was
    /// not checked gives (a model would fail on them without naming the file).
    fn check_ids(&self, src: usize, ids: &[u32]) -> Result<()> {
        match ids.iter().find(|&&t| t >= self.vocab) {
            None => Ok(()),
            Some(t) => {
                let dir = self.sources[src].corpus.dir().display().to_string();
                Err(TrainError::Corpus {
                    corpus: dir.clone(),
                    problem: format!(
                        "token id {t} is not below the vocabulary size {}: a shard is damaged (`lm-train data verify {dir}` names it)",
                        self.vocab
                    ),
                })
            }
        }
    }

    fn wrong_region(&self) -> TrainError {
        TrainError::Corpus {
            corpus: data_name(&self.cfg),
            problem: format!(
                "no {} examples on the {} family",
                self.objective, self.family
            ),
        }
    }

    /// BERT (NSP pairs) and RoBERTa (FULL-SENTENCES blocks), masked 80/10/10.
    fn masked_batch(
        &self,
        split: Split,
        rows: &mut [(usize, Rng)],
        device: &Device,
    ) -> Result<Batch> {
        let mut picked: Vec<NspExample> = vec![];
        let mut masked = vec![];
        for (src, rng) in rows.iter_mut() {
            let region = self.region(*src, split, rng)?;
            let i = rng.below(region.len() as u64) as usize;
            match region {
                Region::Pairs(mut pairs) => {
                    let p = pairs.swap_remove(i);
                    masked.push(self.masker(rng)?.mask(&p.input_ids)?);
                    picked.push(p);
                }
                Region::Blocks(blocks) => masked.push(self.masker(rng)?.mask(&blocks[i])?),
                Region::Chunks(_) => return Err(self.wrong_region()),
            }
        }
        let mut b = self.mlm_batch(masked, device)?;
        if picked.is_empty() {
            return Ok(b);
        }
        let (n, t) = b.input_ids.dims2()?;
        let segs = pad_batch(
            &picked
                .iter()
                .map(|p| p.segment_ids.as_slice())
                .collect::<Vec<_>>(),
            0,
            Some(t),
        )?;
        b.token_type_ids = Some(Tensor::from_vec(segs.input_ids, (n, t), device)?);
        if self.cfg.objective.nsp {
            let nsp: Vec<i64> = picked.iter().map(|p| p.label() as i64).collect();
            b.nsp_labels = Some(Tensor::from_vec(nsp, n, device)?);
        }
        Ok(b)
    }

    /// GPT: windows of `block + 1` tokens at random offsets; inputs and next-token targets.
    /// With `prefix_lm`, each window also draws a prefix of uniformly 1 to `block` tokens that
    /// the model reads both ways, and only the continuation is scored.
    fn decoder_batch(
        &self,
        split: Split,
        rows: &mut [(usize, Rng)],
        prefix_lm: bool,
        device: &Device,
    ) -> Result<Batch> {
        let batch = rows.len();
        let (mut x, mut y) = (
            Vec::with_capacity(batch * self.block),
            Vec::with_capacity(batch * self.block),
        );
        let mut prefix_len = Vec::with_capacity(if prefix_lm { batch } else { 0 });
        let mut w = Vec::with_capacity(self.block + 1);
        for (src, rng) in rows.iter_mut() {
            let stream = self.stream(*src, split);
            let start = rng.below((stream.len() - self.block) as u64) as usize;
            w.clear();
            stream.extend_into(start..start + self.block + 1, &mut w);
            self.check_ids(*src, &w)?;
            if prefix_lm {
                let prefix = 1 + rng.below(self.block as u64) as usize;
                let ex = prefix_lm_window(&w, prefix)?;
                x.extend_from_slice(&ex.input_ids);
                y.extend_from_slice(&ex.targets);
                prefix_len.push(prefix as u32);
            } else {
                window_at(&w, 0, self.block, &mut x, &mut y)?;
            }
        }
        let (labels, host_labels) = labels_tensor(y, (batch, self.block), device)?;
        let prefix_len = match prefix_lm {
            true => Some(Tensor::from_vec(prefix_len, batch, device)?),
            false => None,
        };
        Ok(Batch {
            input_ids: Tensor::from_vec(x, (batch, self.block), device)?,
            attention_mask: None,
            token_type_ids: None,
            labels,
            host_labels,
            nsp_labels: None,
            decoder_input_ids: None,
            prefix_len,
            tokens: batch * self.block,
        })
    }

    /// T5 and BART as prefix LMs (T5's "prefix LM" objective): a window of `block` tokens split
    /// uniformly into an encoder input (the prefix, then EOS; BART also opens with `<s>`) and a
    /// decoder target (the rest, then EOS).
    fn seq2seq_prefix_batch(
        &self,
        split: Split,
        rows: &mut [(usize, Rng)],
        device: &Device,
    ) -> Result<Batch> {
        let sp = &self.specials;
        let (mut inputs, mut targets) = (vec![], vec![]);
        for (src, rng) in rows.iter_mut() {
            let stream = self.stream(*src, split);
            let start = rng.below((stream.len() - self.block) as u64) as usize;
            let window = stream.tokens(start..start + self.block);
            self.check_ids(*src, &window)?;
            let (prefix, rest) = random_prefix_lm(&window, rng)?;
            let mut x = Vec::with_capacity(prefix.len() + 2);
            if self.family.encoder_bos {
                x.push(sp.bos);
            }
            x.extend_from_slice(&prefix);
            x.push(sp.eos);
            let mut y: Vec<i64> = rest.iter().map(|&t| t as i64).collect();
            y.push(sp.eos as i64);
            inputs.push(x);
            targets.push(y);
        }
        self.seq2seq(inputs, targets, self.decoder_start(), device)
    }

    /// T5: span corruption of raw windows sized so the corrupted input fills the block.
    fn span_batch(
        &self,
        split: Split,
        rows: &mut [(usize, Rng)],
        device: &Device,
    ) -> Result<Batch> {
        let sc = SpanCorruptionConfig {
            noise_density: self.cfg.objective.noise_density,
            mean_span_length: self.cfg.objective.mean_span_length,
        };
        let sentinels = Sentinels {
            first: self.specials.sentinel,
            count: 100,
            descending: false,
        };
        let mut c = SpanCorruptor::new(sc, sentinels, self.specials.eos)?;
        let mut inputs = vec![];
        let mut targets: Vec<Vec<i64>> = vec![];
        for (src, rng) in rows.iter_mut() {
            let stream = self.stream(*src, split);
            let start = rng.below((stream.len() - self.raw_len) as u64) as usize;
            let window = stream.tokens(start..start + self.raw_len);
            self.check_ids(*src, &window)?;
            let ex = c.corrupt(&window, rng)?;
            inputs.push(ex.input_ids);
            targets.push(ex.target_ids.iter().map(|&t| t as i64).collect());
        }
        self.seq2seq(inputs, targets, self.decoder_start(), device)
    }

    /// Masked examples padded, with their attention mask and MLM labels (BERT, RoBERTa).
    /// The encoder-decoder objectives' input and target lengths, the longest each can give:
    /// T5's span corruption its fixed lengths, BART and prefix LM the block (and the prefix its
    /// `<s>` and `</s>`).
    fn padded_lengths(&self) -> Result<(usize, usize)> {
        Ok(match self.objective {
            ObjectiveKind::SpanCorruption => {
                let sc = SpanCorruptionConfig {
                    noise_density: self.cfg.objective.noise_density,
                    mean_span_length: self.cfg.objective.mean_span_length,
                };
                (self.block, sc.raw_length_for_inputs(self.block)?.1)
            }
            ObjectiveKind::PrefixLm => (self.block + 2, self.block),
            _ => (self.block, self.block),
        })
    }

    fn mlm_batch(&self, masked: Vec<MlmExample>, device: &Device) -> Result<Batch> {
        // Tokens as read (not padding): the same for any split of the batch between ranks.
        let tokens = masked.iter().map(|m| m.input_ids.len()).sum();
        // Padded to the block, not to the batch's longest: see `seq2seq`.
        let ids = pad_batch(
            &masked
                .iter()
                .map(|m| m.input_ids.as_slice())
                .collect::<Vec<_>>(),
            self.specials.pad,
            Some(self.block),
        )?;
        let labels = pad_labels(
            &masked
                .iter()
                .map(|m| m.labels.as_slice())
                .collect::<Vec<_>>(),
            ids.len,
        )?;
        let (b, t) = (ids.batch, ids.len);
        let (labels, host_labels) = labels_tensor(labels, (b, t), device)?;
        Ok(Batch {
            input_ids: Tensor::from_vec(ids.input_ids, (b, t), device)?,
            attention_mask: Some(Tensor::from_vec(ids.attention_mask, (b, t), device)?),
            token_type_ids: None,
            labels,
            host_labels,
            nsp_labels: None,
            decoder_input_ids: None,
            prefix_len: None,
            tokens,
        })
    }

    /// BART: text infilling and sentence permutation of whole documents, reconstructed.
    fn denoising_batch(
        &self,
        split: Split,
        rows: &mut [(usize, Rng)],
        device: &Device,
    ) -> Result<Batch> {
        let ob = &self.cfg.objective;
        let noise = BartNoise {
            permute_sentences: ob.permute_sentences,
            infilling: Some(InfillingConfig {
                mask_ratio: ob.mask_ratio,
                lambda: ob.poisson_lambda,
                mask: self.specials.mask,
                placement: ob.infilling.into(),
            }),
            ..Default::default()
        };
        let mut inputs = vec![];
        let mut targets = vec![];
        for (src, rng) in rows.iter_mut() {
            let Region::Chunks(chunks) = self.region(*src, split, rng)? else {
                return Err(self.wrong_region());
            };
            let doc = &chunks[rng.below(chunks.len() as u64) as usize];
            let ex = noise.apply(doc, rng)?;
            let mut x = ex.input_ids;
            x.truncate(self.block - 1);
            x.push(self.specials.eos);
            let mut y: Vec<i64> = ex.target_ids.iter().map(|&t| t as i64).collect();
            y.truncate(self.block - 1);
            y.push(self.specials.eos as i64);
            inputs.push(x);
            targets.push(y);
        }
        self.seq2seq(inputs, targets, self.decoder_start(), device)
    }

    /// The decoder's first input: T5's pad token, BART's EOS (as their HF configs say).
    fn decoder_start(&self) -> u32 {
        match self.family.decoder_start {
            DecoderStart::Pad => self.specials.pad,
            DecoderStart::Eos => self.specials.eos,
        }
    }

    /// Pads encoder inputs and targets; decoder inputs are the targets shifted right after
    /// `decoder_start`.
    fn seq2seq(
        &self,
        inputs: Vec<Vec<u32>>,
        targets: Vec<Vec<i64>>,
        decoder_start: u32,
        device: &Device,
    ) -> Result<Batch> {
        let tokens = inputs.iter().map(Vec::len).sum::<usize>()
            + targets.iter().map(Vec::len).sum::<usize>();
        // Padded to lengths fixed by the objective, not by the batch: a rank's rows then have the
        // shapes of the global batch's, and so the same dropout masks.
        let (enc, dec) = self.padded_lengths()?;
        let ids = pad_batch(&inputs, self.specials.pad, Some(enc))?;
        let tlen = targets
            .iter()
            .map(Vec::len)
            .max()
            .unwrap_or(1)
            .next_multiple_of(dec);
        let labels = pad_labels(&targets, tlen)?;
        let dec = shift_right(&labels, tlen, decoder_start, self.specials.pad)?;
        let b = ids.batch;
        let (labels_t, host_labels) = labels_tensor(labels, (b, tlen), device)?;
        Ok(Batch {
            input_ids: Tensor::from_vec(ids.input_ids, (b, ids.len), device)?,
            attention_mask: Some(Tensor::from_vec(ids.attention_mask, (b, ids.len), device)?),
            token_type_ids: None,
            labels: labels_t,
            host_labels,
            nsp_labels: None,
            decoder_input_ids: Some(Tensor::from_vec(dec, (b, tlen), device)?),
            prefix_len: None,
            tokens,
        })
    }
}
