//! GPT, BERT, BART and T5: gradients against finite differences; a few dozen steps of training with
//! lm-objectives' objectives lower the loss, preset sizes, refused checkpoints, cached decoding.

use candle_core::{DType, Device, Tensor};
use lm_models::bart::{Bart, BartConfig};
use lm_models::bert::{Bert, BertConfig};
use lm_models::gpt::{Gpt, GptConfig};
use lm_models::t5::{T5Config, T5};
use lm_models::EncoderDecoder;
use lm_models::{DropoutKey, MatmulPrecision, StepContext};
use lm_models::{ParamStore, Sampling};
use lm_objectives::loss::{bert_pretraining_loss, cross_entropy, CrossEntropy};
use lm_objectives::Rng;
use lm_optim::{Adam, AdamConfig, Optimizer, ParamGroup};

/// f32 products.
const F32: MatmulPrecision = MatmulPrecision::Highest;

/// What these tests run under: f32 products, dropout on (the tiny configs have rate 0, so it is
/// the identity) with key 0.
const TRAIN: StepContext = StepContext {
    precision: MatmulPrecision::Highest,
    dropout: Some(DropoutKey {
        key: 0,
        first_row: 0,
    }),
    recompute: lm_models::Recompute::Nothing,
};

const V: usize = 24;

fn u32s(rows: &[&[u32]]) -> Tensor {
    let t = rows[0].len();
    Tensor::from_vec(rows.concat(), (rows.len(), t), &Device::Cpu).unwrap()
}

fn i64s(rows: &[&[i64]]) -> Tensor {
    let t = rows[0].len();
    Tensor::from_vec(rows.concat(), (rows.len(), t), &Device::Cpu).unwrap()
}

/// Central differences on a few coordinates of every parameter, in f64.
fn check_gradients(store: &ParamStore, loss: impl Fn() -> Tensor) {
    let grads = loss().backward().unwrap();
    let h = 1e-6;
    for (name, var) in store.vars() {
        let g = grads
            .get(var.as_tensor())
            .unwrap_or_else(|| panic!("no gradient for {name}"));
        let g = g.flatten_all().unwrap().to_vec1::<f64>().unwrap();
        let theta = var
            .as_tensor()
            .flatten_all()
            .unwrap()
            .to_vec1::<f64>()
            .unwrap();
        for &i in &[0, theta.len() / 3, theta.len() - 1] {
            let eval = |delta: f64| {
                let mut t = theta.clone();
                t[i] += delta;
                var.set(&Tensor::from_vec(t, var.shape(), &Device::Cpu).unwrap())
                    .unwrap();
                loss().to_scalar::<f64>().unwrap()
            };
            let numeric = (eval(h) - eval(-h)) / (2.0 * h);
            var.set(&Tensor::from_vec(theta.clone(), var.shape(), &Device::Cpu).unwrap())
                .unwrap();
            let tol = 1e-6 + 1e-4 * numeric.abs().max(g[i].abs());
            assert!(
                (numeric - g[i]).abs() < tol,
                "{name}[{i}]: autograd {} vs numeric {numeric}",
                g[i]
            );
        }
    }
}

#[test]
fn gpt_gradients_match_finite_differences() {
    let store = ParamStore::new(3);
    let model = Gpt::new(
        &GptConfig::tiny(8),
        store.var_builder(DType::F64, &Device::Cpu),
    )
    .unwrap();
    let x = u32s(&[&[1, 5, 2, 7, 3, 3], &[0, 4, 4, 6, 1, 2]]);
    let y = i64s(&[&[5, 2, 7, 3, 3, 1], &[4, 4, 6, 1, 2, -100]]);
    check_gradients(&store, || {
        cross_entropy(
            &model.forward(&x, &TRAIN).unwrap(),
            &y,
            &CrossEntropy::default(),
        )
        .unwrap()
    });
}

#[test]
fn bert_gradients_match_finite_differences() {
    let store = ParamStore::new(1);
    let model = Bert::new(
        &BertConfig::tiny(V),
        store.var_builder(DType::F64, &Device::Cpu),
    )
    .unwrap();
    let ids = u32s(&[&[1, 5, 6, 2, 7, 8, 2], &[1, 9, 2, 10, 2, 0, 0]]);
    let tt = u32s(&[&[0, 0, 0, 0, 1, 1, 1], &[0, 0, 0, 1, 1, 0, 0]]);
    let mask = u32s(&[&[1, 1, 1, 1, 1, 1, 1], &[1, 1, 1, 1, 1, 0, 0]]);
    let labels = i64s(&[
        &[-100, 11, -100, -100, 12, -100, -100],
        &[-100, -100, -100, 13, -100, -100, -100],
    ]);
    let nsp = Tensor::new(&[0i64, 1], &Device::Cpu).unwrap();
    check_gradients(&store, || {
        let (mlm, ns) = model.forward(&ids, Some(&tt), Some(&mask), &TRAIN).unwrap();
        bert_pretraining_loss(&mlm, &labels, &ns, &nsp).unwrap()
    });
}

fn seq2seq_batch() -> (Tensor, Tensor, Tensor, Tensor) {
    let ids = u32s(&[&[5, 6, 7, 8, 2], &[9, 10, 2, 1, 1]]);
    let mask = u32s(&[&[1, 1, 1, 1, 1], &[1, 1, 1, 0, 0]]);
    let dec = u32s(&[&[2, 11, 12, 13], &[2, 14, 15, 1]]);
    let labels = i64s(&[&[11, 12, 13, 2], &[14, 15, 2, -100]]);
    (ids, mask, dec, labels)
}

#[test]
fn bart_gradients_match_finite_differences() {
    let store = ParamStore::new(2);
    let model = Bart::new(
        &BartConfig::tiny(V),
        store.var_builder(DType::F64, &Device::Cpu),
    )
    .unwrap();
    let (ids, mask, dec, labels) = seq2seq_batch();
    check_gradients(&store, || {
        cross_entropy(
            &model.forward(&ids, Some(&mask), &dec, &TRAIN).unwrap(),
            &labels,
            &CrossEntropy::default(),
        )
        .unwrap()
    });
}

#[test]
fn t5_gradients_match_finite_differences() {
    for ff in ["relu", "gated-gelu"] {
        let store = ParamStore::new(3);
        let cfg = T5Config {
            feed_forward_proj: ff.into(),
            tie_word_embeddings: ff == "relu",
            ..T5Config::tiny(V)
        };
        let model = T5::new(&cfg, store.var_builder(DType::F64, &Device::Cpu)).unwrap();
        let (ids, mask, dec, labels) = seq2seq_batch();
        check_gradients(&store, || {
            cross_entropy(
                &model.forward(&ids, Some(&mask), &dec, &TRAIN).unwrap(),
                &labels,
                &CrossEntropy::default(),
            )
            .unwrap()
        });
    }
}

fn adamw(store: &ParamStore, skip: impl Fn(&str) -> bool) -> Adam {
    let params = store.vars().into_iter().filter(|(n, _)| !skip(n)).collect();
    Adam::new(
        vec![ParamGroup::new("all", params, 0.01)],
        AdamConfig::adamw(),
    )
    .unwrap()
}

/// Documents of a toy language: each sentence counts up from a random start.
fn toy_documents(rng: &mut Rng, n_docs: usize) -> Vec<Vec<Vec<u32>>> {
    (0..n_docs)
        .map(|_| {
            (0..4)
                .map(|_| {
                    let s = 5 + rng.below(8) as u32;
                    (0..4).map(|k| s + k).collect()
                })
                .collect()
        })
        .collect()
}

#[test]
fn bert_mlm_and_nsp_training_lowers_the_loss() {
    use lm_objectives::mlm::{MlmConfig, MlmMasker};
    use lm_objectives::nsp::{next_sentence_pairs, NspConfig};
    let (model, store) = Bert::init(&BertConfig::tiny(V), 0, &Device::Cpu).unwrap();
    let mut rng = Rng::seed_from_u64(0);
    let docs = toy_documents(&mut rng, 6);
    let pairs = next_sentence_pairs(
        &docs,
        &NspConfig {
            max_len: 16,
            is_next_prob: 0.5,
            cls: 1,
            sep: 2,
        },
        &mut rng,
    )
    .unwrap();
    let mut masker = MlmMasker::new(MlmConfig::default(), V as u32, 3, &[0, 1, 2, 3], 7).unwrap();
    let mut opt = adamw(&store, |_| false);
    let batch = |masker: &mut MlmMasker| {
        let exs: Vec<_> = pairs
            .iter()
            .map(|p| masker.mask(&p.input_ids).unwrap())
            .collect();
        let ids: Vec<Vec<u32>> = exs.iter().map(|e| e.input_ids.clone()).collect();
        let padded = lm_objectives::collate::pad_batch(&ids, 0, None).unwrap();
        let labels = lm_objectives::collate::pad_labels(
            &exs.iter().map(|e| e.labels.clone()).collect::<Vec<_>>(),
            padded.len,
        )
        .unwrap();
        let segs: Vec<Vec<u32>> = pairs.iter().map(|p| p.segment_ids.clone()).collect();
        let segs = lm_objectives::collate::pad_batch(&segs, 0, Some(padded.len)).unwrap();
        let shape = (padded.batch, padded.len);
        let d = &Device::Cpu;
        (
            Tensor::from_vec(padded.input_ids, shape, d).unwrap(),
            Tensor::from_vec(segs.input_ids, shape, d).unwrap(),
            Tensor::from_vec(padded.attention_mask, shape, d).unwrap(),
            Tensor::from_vec(labels, shape, d).unwrap(),
            Tensor::from_vec(
                pairs.iter().map(|p| p.label() as i64).collect::<Vec<_>>(),
                padded.batch,
                d,
            )
            .unwrap(),
        )
    };
    let loss = |b: &(Tensor, Tensor, Tensor, Tensor, Tensor)| {
        let (mlm, nsp) = model.forward(&b.0, Some(&b.1), Some(&b.2), &TRAIN).unwrap();
        bert_pretraining_loss(&mlm, &b.3, &nsp, &b.4).unwrap()
    };
    let eval = batch(&mut masker);
    let first = loss(&eval).to_scalar::<f32>().unwrap();
    for _ in 0..60 {
        let b = batch(&mut masker); // dynamic masking: a fresh mask every step
        opt.step(&loss(&b).backward().unwrap(), 3e-3).unwrap();
    }
    let last = loss(&eval).to_scalar::<f32>().unwrap();
    assert!(last < first - 1.0, "BERT loss {first} -> {last}");
}

/// Padded encoder inputs, their attention mask, decoder inputs (targets shifted right after
/// `start`) and labels.
fn padded_seq2seq(inputs: &[Vec<u32>], targets: &[Vec<i64>], pad: u32, start: u32) -> [Tensor; 4] {
    let d = &Device::Cpu;
    let x = lm_objectives::collate::pad_batch(inputs, pad, None).unwrap();
    let tlen = targets.iter().map(Vec::len).max().unwrap();
    let labels = lm_objectives::collate::pad_labels(targets, tlen).unwrap();
    let dec = lm_objectives::collate::shift_right(&labels, tlen, start, pad).unwrap();
    [
        Tensor::from_vec(x.input_ids, (x.batch, x.len), d).unwrap(),
        Tensor::from_vec(x.attention_mask, (x.batch, x.len), d).unwrap(),
        Tensor::from_vec(dec, (x.batch, tlen), d).unwrap(),
        Tensor::from_vec(labels, (x.batch, tlen), d).unwrap(),
    ]
}

/// 40 AdamW steps on one batch of an encoder-decoder; the (first, last) loss.
fn fit_seq2seq(
    forward: impl Fn(&Tensor, &Tensor, &Tensor) -> Tensor,
    opt: &mut Adam,
    [ids, mask, dec, labels]: &[Tensor; 4],
) -> (f32, f32) {
    let loss =
        || cross_entropy(&forward(ids, mask, dec), labels, &CrossEntropy::default()).unwrap();
    let first = loss().to_scalar::<f32>().unwrap();
    for _ in 0..40 {
        opt.step(&loss().backward().unwrap(), 1e-2).unwrap();
    }
    (first, loss().to_scalar::<f32>().unwrap())
}

#[test]
fn t5_span_corruption_training_lowers_the_loss() {
    use lm_objectives::span_corruption::{Sentinels, SpanCorruptionConfig, SpanCorruptor};
    let (model, store) = T5::init(&T5Config::tiny(V), 0, &Device::Cpu).unwrap();
    let mut rng = Rng::seed_from_u64(1);
    let docs: Vec<Vec<u32>> = toy_documents(&mut rng, 8)
        .into_iter()
        .map(|d| d.concat())
        .collect();
    let sentinels = Sentinels {
        first: V as u32 - 1,
        count: 4,
        descending: true,
    };
    let mut corruptor = SpanCorruptor::new(SpanCorruptionConfig::default(), sentinels, 1).unwrap();
    let examples: Vec<_> = docs
        .iter()
        .map(|d| corruptor.corrupt(d, &mut rng).unwrap())
        .collect();
    let inputs: Vec<Vec<u32>> = examples.iter().map(|e| e.input_ids.clone()).collect();
    let targets: Vec<Vec<i64>> = examples
        .iter()
        .map(|e| e.target_ids.iter().map(|&t| t as i64).collect())
        .collect();
    let batch = padded_seq2seq(&inputs, &targets, 0, 0);
    let (first, last) = fit_seq2seq(
        |x, m, d| model.forward(x, Some(m), d, &TRAIN).unwrap(),
        &mut adamw(&store, |_| false),
        &batch,
    );
    assert!(last < 0.5 * first, "T5 loss {first} -> {last}");
}

#[test]
fn bart_denoising_training_lowers_the_loss() {
    use lm_objectives::bart::{BartNoise, InfillingConfig};
    let (model, store) = Bart::init(&BartConfig::tiny(V), 0, &Device::Cpu).unwrap();
    let mut rng = Rng::seed_from_u64(2);
    let docs = toy_documents(&mut rng, 8);
    let noise = BartNoise {
        permute_sentences: true,
        infilling: Some(InfillingConfig {
            mask_ratio: 0.3,
            lambda: 3.0,
            mask: 3,
            placement: Default::default(),
        }),
        ..Default::default()
    };
    let exs: Vec<_> = docs
        .iter()
        .map(|d| noise.apply(d, &mut rng).unwrap())
        .collect();
    let inputs: Vec<Vec<u32>> = exs.iter().map(|e| e.input_ids.clone()).collect();
    let targets: Vec<Vec<i64>> = exs
        .iter()
        .map(|e| e.target_ids.iter().map(|&t| t as i64).chain([2]).collect())
        .collect();
    let batch = padded_seq2seq(&inputs, &targets, 1, 2);
    let (first, last) = fit_seq2seq(
        |x, m, d| model.forward(x, Some(m), d, &TRAIN).unwrap(),
        &mut adamw(&store, Bart::is_buffer),
        &batch,
    );
    assert!(last < 0.5 * first, "BART loss {first} -> {last}");
}

#[test]
fn preset_parameter_counts_match_the_papers() {
    let m = |n: usize| n as f64 / 1e6;
    assert!(
        (m(GptConfig::gpt2_small().num_params()) - 124.4).abs() < 0.1,
        "{}",
        GptConfig::gpt2_small().num_params()
    );
    assert!(
        (m(BertConfig::base().num_params()) - 110.1).abs() < 0.5,
        "{}",
        BertConfig::base().num_params()
    );
    let large = m(BertConfig::large().num_params());
    assert!((335.0..=340.0).contains(&large), "{large}");
    assert!(
        (m(BartConfig::base().num_params()) - 139.4).abs() < 0.5,
        "{}",
        BartConfig::base().num_params()
    );
    assert!(
        (m(T5Config::small().num_params()) - 60.5).abs() < 0.1,
        "{}",
        T5Config::small().num_params()
    );
    // The formulas agree with the parameters a model actually creates.
    let cfg = BertConfig::tiny(V);
    assert_eq!(
        Bert::init(&cfg, 0, &Device::Cpu).unwrap().1.num_params(),
        cfg.num_params()
    );
    let cfg = BartConfig::tiny(V);
    assert_eq!(
        Bart::init(&cfg, 0, &Device::Cpu).unwrap().1.num_params(),
        cfg.num_params() + V
    );
    for tie in [true, false] {
        let cfg = T5Config {
            tie_word_embeddings: tie,
            feed_forward_proj: if tie {
                "relu".into()
            } else {
                "gated-gelu".into()
            },
            ..T5Config::tiny(V)
        };
        assert_eq!(
            T5::init(&cfg, 0, &Device::Cpu).unwrap().1.num_params(),
            cfg.num_params()
        );
    }
}

fn fixture(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/models")
        .join(name)
}

#[test]
fn inconsistent_checkpoints_are_refused_naming_the_tensor() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    std::fs::copy(
        fixture("gpt2").join("model.safetensors"),
        dir.join("model.safetensors"),
    )
    .unwrap();
    let config = std::fs::read_to_string(fixture("gpt2").join("config.json")).unwrap();
    // A config that disagrees with the weights: wider model.
    std::fs::write(
        dir.join("config.json"),
        config.replace("\"n_embd\": 32", "\"n_embd\": 48"),
    )
    .unwrap();
    let e = Gpt::from_hf_dir(dir, &Device::Cpu).unwrap_err().to_string();
    assert!(
        e.contains(
            "tensor transformer.h.0.attn.c_attn.bias has shape [96], the config expects [144]"
        ),
        "{e}"
    );
    // More layers than the file has.
    std::fs::write(
        dir.join("config.json"),
        config.replace("\"n_layer\": 2", "\"n_layer\": 3"),
    )
    .unwrap();
    let e = Gpt::from_hf_dir(dir, &Device::Cpu).unwrap_err().to_string();
    assert!(
        e.contains("transformer.h.2.") && e.contains("missing"),
        "{e}"
    );
    // Another architecture.
    std::fs::write(
        dir.join("config.json"),
        config.replace("\"gpt2\"", "\"llama\""),
    )
    .unwrap();
    let e = Gpt::from_hf_dir(dir, &Device::Cpu).unwrap_err().to_string();
    assert!(
        e.contains("unknown architecture") && e.contains("llama"),
        "{e}"
    );
    // A truncated weights file.
    std::fs::write(dir.join("config.json"), &config).unwrap();
    let bytes = std::fs::read(dir.join("model.safetensors")).unwrap();
    std::fs::write(dir.join("model.safetensors"), &bytes[..bytes.len() / 3]).unwrap();
    let e = Gpt::from_hf_dir(dir, &Device::Cpu).unwrap_err().to_string();
    assert!(e.contains("model.safetensors"), "{e}");
}

#[test]
fn cached_and_uncached_decoding_give_the_same_tokens() {
    let d = &Device::Cpu;
    for sampling in [
        Sampling::greedy(),
        Sampling {
            temperature: 0.9,
            top_k: Some(10),
            top_p: Some(0.95),
        },
    ] {
        let (gpt, _) = Gpt::init(&GptConfig::tiny(V), 4, d).unwrap();
        let a = gpt
            .generate_with(
                &[3, 4, 5],
                12,
                (&sampling, &mut Rng::seed_from_u64(9)),
                true,
                F32,
            )
            .unwrap();
        let b = gpt
            .generate_with(
                &[3, 4, 5],
                12,
                (&sampling, &mut Rng::seed_from_u64(9)),
                false,
                F32,
            )
            .unwrap();
        assert_eq!(a, b);
        assert_eq!(a.len(), 15);
        let input = u32s(&[&[5, 6, 7, 8, 9]]);
        let (bart, _) = Bart::init(&BartConfig::tiny(V), 5, d).unwrap();
        let a = bart
            .generate(
                &input,
                10,
                (&sampling, &mut Rng::seed_from_u64(9)),
                true,
                F32,
            )
            .unwrap();
        let b = bart
            .generate(
                &input,
                10,
                (&sampling, &mut Rng::seed_from_u64(9)),
                false,
                F32,
            )
            .unwrap();
        assert_eq!(a, b);
        let (t5, _) = T5::init(&T5Config::tiny(V), 6, d).unwrap();
        let a = t5
            .generate(
                &input,
                10,
                (&sampling, &mut Rng::seed_from_u64(9)),
                true,
                F32,
            )
            .unwrap();
        let b = t5
            .generate(
                &input,
                10,
                (&sampling, &mut Rng::seed_from_u64(9)),
                false,
                F32,
            )
            .unwrap();
        assert_eq!(a, b);
    }
}

/// Half precision end to end. (candle 0.11's CPU matmul has no bf16 kernel: bf16 models run on
/// CUDA and Metal only.)
#[test]
fn every_family_runs_in_f16() {
    let d = &Device::Cpu;
    let ids = u32s(&[&[5, 6, 7, 8]]);
    #[allow(clippy::single_element_loop)] // bf16 joins the list once CPU matmul supports it
    for dtype in [DType::F16] {
        let store = ParamStore::new(0);
        let g = Gpt::new(&GptConfig::tiny(V), store.var_builder(dtype, d)).unwrap();
        let logits = g.forward(&ids, &TRAIN).unwrap();
        assert_eq!(logits.dtype(), dtype);
        let full = Gpt::new(
            &GptConfig::tiny(V),
            ParamStore::new(0).var_builder(DType::F32, d),
        )
        .unwrap()
        .forward(&ids, &TRAIN)
        .unwrap();
        let diff = (logits.to_dtype(DType::F32).unwrap() - full)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(diff < 0.05, "{dtype:?}: {diff}");
        let store = ParamStore::new(0);
        let b = Bert::new(&BertConfig::tiny(V), store.var_builder(dtype, d)).unwrap();
        assert_eq!(
            b.forward(&ids, None, Some(&u32s(&[&[1, 1, 1, 0]])), &TRAIN)
                .unwrap()
                .0
                .dtype(),
            dtype
        );
        let store = ParamStore::new(0);
        let m = Bart::new(&BartConfig::tiny(V), store.var_builder(dtype, d)).unwrap();
        assert_eq!(
            m.forward(&ids, Some(&u32s(&[&[1, 1, 1, 0]])), &ids, &TRAIN)
                .unwrap()
                .dtype(),
            dtype
        );
        let store = ParamStore::new(0);
        let m = T5::new(&T5Config::tiny(V), store.var_builder(dtype, d)).unwrap();
        assert_eq!(
            m.forward(&ids, Some(&u32s(&[&[1, 1, 1, 0]])), &ids, &TRAIN)
                .unwrap()
                .dtype(),
            dtype
        );
    }
}

/// A `config.json` that declares a model larger than its `model.safetensors` can hold is refused
/// while the model is built, naming the weights file, before it allocates the declared sizes
/// (here ≈ 4 × 10^12 scalars); the fixture's own config still loads.
#[test]
fn a_config_larger_than_its_weights_is_refused_before_allocating() {
    for (family, model_type) in [
        ("gpt2", "gpt2"),
        ("bert", "bert"),
        ("bart", "bart"),
        ("t5", "t5"),
    ] {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        std::fs::copy(
            fixture(family).join("model.safetensors"),
            dir.join("model.safetensors"),
        )
        .unwrap();
        let mut cfg: serde_json::Value =
            serde_json::from_slice(&std::fs::read(fixture(family).join("config.json")).unwrap())
                .unwrap();
        std::fs::write(dir.join("config.json"), cfg.to_string()).unwrap();
        let loads = |dir: &std::path::Path| -> Result<(), String> {
            let cpu = &Device::Cpu;
            let r = match model_type {
                "gpt2" => Gpt::from_hf_dir(dir, cpu).map(drop),
                "bert" => Bert::from_hf_dir(dir, cpu).map(drop),
                "bart" => Bart::from_hf_dir(dir, cpu).map(drop),
                _ => T5::from_hf_dir(dir, cpu).map(drop),
            };
            r.map_err(|e| e.to_string())
        };
        loads(dir).unwrap();
        let key = match model_type {
            "gpt2" => "n_embd",
            "t5" | "bart" => "d_model",
            _ => "hidden_size",
        };
        cfg[key] = serde_json::json!(2_000_000);
        cfg["vocab_size"] = serde_json::json!(2_000_000);
        std::fs::write(dir.join("config.json"), cfg.to_string()).unwrap();
        let e = loads(dir).unwrap_err();
        assert!(
            e.contains("model.safetensors") && e.contains("does not describe these weights"),
            "{family}: {e}"
        );
    }
}
