//! CUDA against CPU: every family's forward and backward, the GPU paths of the fused ops, a
//! tiny recipe's losses, and checkpoints moving between the two.
//!
//! These run where a CUDA device opens (a `--features cuda` build on a machine with a GPU, the
//! driver and the CUDA libraries: `cargo xtask gpu-check`); everywhere else each test prints one
//! line, `skipped: <test>: <why>`, and passes. `cargo xtask cuda-build` builds and runs them on
//! every machine, so the skip path itself is exercised in CI.
//!
//! Built with `--features metal` instead, the same tests compare a Metal device with the CPU
//! (the fused ops' composite forms there): on a Mac, `cargo test -p lm-integration-tests
//! --features metal --test cuda`. `cargo xtask metal-check` type-checks them; none has run.

use candle_core::{DType, Device, Tensor};
use lm_integration_tests::tiny_config;
use lm_models::bart::{Bart, BartConfig};
use lm_models::bert::{Bert, BertConfig};
use lm_models::gpt::{Gpt, GptConfig};
use lm_models::t5::{T5Config, T5};
use lm_models::{EncoderDecoder, MatmulPrecision, ParamStore, StepContext};
use lm_objectives::loss::{bert_pretraining_loss, cross_entropy, CrossEntropy};
use lm_train::choices::Precision;
use lm_train::data::BUILTIN_SHAKESPEARE;
use lm_train::metrics::MetricsLog;
use lm_train::Trainer;

/// The GPU (the Metal device in a `metal` build), or `None` after printing why this test is
/// skipped.
fn gpu(test: &str) -> Option<Device> {
    #[cfg(feature = "metal")]
    let opened = lm_kernels::device::metal(0);
    #[cfg(not(feature = "metal"))]
    let opened = lm_kernels::device::cuda(0);
    match opened {
        Ok(device) => Some(device),
        Err(e) => {
            println!("skipped: {test}: {e}");
            None
        }
    }
}

const V: usize = 24;

/// f32 products.
const F32: MatmulPrecision = MatmulPrecision::Highest;

fn u32s(rows: &[&[u32]], device: &Device) -> Tensor {
    let t = rows[0].len();
    Tensor::from_vec(rows.concat(), (rows.len(), t), device).unwrap()
}

fn i64s(rows: &[&[i64]], device: &Device) -> Tensor {
    let t = rows[0].len();
    Tensor::from_vec(rows.concat(), (rows.len(), t), device).unwrap()
}

/// `loss(store, device)` on the CPU and on the GPU from the same parameter values: the losses
/// agree within 1e-5 relative and every gradient within 1e-4 of its largest entry (f32 sums in
/// another order: cuBLAS and the CUDA reductions against the CPU kernels).
fn cpu_and_gpu_agree(
    family: &str,
    gpu: &Device,
    build: impl Fn(&ParamStore, &Device) -> Box<dyn Fn() -> Tensor>,
) {
    let cpu_store = ParamStore::new(7);
    let cpu_loss = build(&cpu_store, &Device::Cpu);
    let gpu_store = ParamStore::new(7);
    let gpu_loss = build(&gpu_store, gpu);
    // The same values on both, whatever the initializers do per device.
    for (name, var) in cpu_store.vars() {
        let g = gpu_store.get(&name).expect("same parameters");
        g.set(&var.as_tensor().to_device(gpu).unwrap()).unwrap();
    }
    let (lc, lg) = (cpu_loss(), gpu_loss());
    let (a, b) = (
        lc.to_scalar::<f32>().unwrap(),
        lg.to_device(&Device::Cpu)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap(),
    );
    assert!(
        (a - b).abs() <= 1e-5 * a.abs().max(1.0),
        "{family}: loss cpu {a} vs cuda {b}"
    );
    let (gc, gg) = (lc.backward().unwrap(), lg.backward().unwrap());
    for (name, var) in cpu_store.vars() {
        let want = gc.get(var.as_tensor()).unwrap();
        let got = gg
            .get(gpu_store.get(&name).unwrap().as_tensor())
            .unwrap_or_else(|| panic!("{family}: no CUDA gradient for {name}"))
            .to_device(&Device::Cpu)
            .unwrap();
        let scale = want
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        let diff = (want - got)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(
            diff <= 1e-4 * scale + 1e-7,
            "{family}: gradient of {name} differs by {diff} (largest entry {scale})"
        );
    }
}

#[test]
fn every_family_forward_and_backward_on_cuda_equals_cpu() {
    let Some(gpu) = gpu("every_family_forward_and_backward_on_cuda_equals_cpu") else {
        return;
    };
    cpu_and_gpu_agree("gpt", &gpu, |store, dev| {
        let model = Gpt::new(&GptConfig::tiny(V), store.var_builder(DType::F32, dev)).unwrap();
        let x = u32s(&[&[1, 5, 2, 7, 3, 3], &[0, 4, 4, 6, 1, 2]], dev);
        let y = i64s(&[&[5, 2, 7, 3, 3, 1], &[4, 4, 6, 1, 2, -100]], dev);
        Box::new(move || {
            cross_entropy(
                &model.forward(&x, &StepContext::EVAL).unwrap(),
                &y,
                &CrossEntropy::default(),
            )
            .unwrap()
        })
    });
    cpu_and_gpu_agree("bert", &gpu, |store, dev| {
        let model = Bert::new(&BertConfig::tiny(V), store.var_builder(DType::F32, dev)).unwrap();
        let ids = u32s(&[&[1, 5, 6, 2, 7, 8, 2], &[1, 9, 2, 10, 2, 0, 0]], dev);
        let tt = u32s(&[&[0, 0, 0, 0, 1, 1, 1], &[0, 0, 0, 1, 1, 0, 0]], dev);
        let mask = u32s(&[&[1, 1, 1, 1, 1, 1, 1], &[1, 1, 1, 1, 1, 0, 0]], dev);
        let labels = i64s(
            &[
                &[-100, 11, -100, -100, 12, -100, -100],
                &[-100, -100, -100, 13, -100, -100, -100],
            ],
            dev,
        );
        let nsp = Tensor::new(&[0i64, 1], dev).unwrap();
        Box::new(move || {
            let (mlm, ns) = model
                .forward(&ids, Some(&tt), Some(&mask), &StepContext::EVAL)
                .unwrap();
            bert_pretraining_loss(&mlm, &labels, &ns, &nsp).unwrap()
        })
    });
    let seq2seq = |dev: &Device| {
        (
            u32s(&[&[5, 6, 7, 8, 2], &[9, 10, 2, 1, 1]], dev),
            u32s(&[&[1, 1, 1, 1, 1], &[1, 1, 1, 0, 0]], dev),
            u32s(&[&[2, 11, 12, 13], &[2, 14, 15, 1]], dev),
            i64s(&[&[11, 12, 13, 2], &[14, 15, 2, -100]], dev),
        )
    };
    cpu_and_gpu_agree("bart", &gpu, |store, dev| {
        let model = Bart::new(&BartConfig::tiny(V), store.var_builder(DType::F32, dev)).unwrap();
        let (ids, mask, dec, labels) = seq2seq(dev);
        Box::new(move || {
            let logits = model
                .forward(&ids, Some(&mask), &dec, &StepContext::EVAL)
                .unwrap();
            cross_entropy(&logits, &labels, &CrossEntropy::default()).unwrap()
        })
    });
    cpu_and_gpu_agree("t5", &gpu, |store, dev| {
        let cfg = T5Config {
            feed_forward_proj: "gated-gelu".into(),
            ..T5Config::tiny(V)
        };
        let model = T5::new(&cfg, store.var_builder(DType::F32, dev)).unwrap();
        let (ids, mask, dec, labels) = seq2seq(dev);
        Box::new(move || {
            let logits = model
                .forward(&ids, Some(&mask), &dec, &StepContext::EVAL)
                .unwrap();
            cross_entropy(&logits, &labels, &CrossEntropy::default()).unwrap()
        })
    });
}

#[test]
fn each_cuda_op_equals_its_composite_form_in_value_and_gradient() {
    let Some(gpu) = gpu("each_cuda_op_equals_its_composite_form_in_value_and_gradient") else {
        return;
    };
    use lm_kernels::ops::{self, composite};
    let x = Tensor::randn(0f32, 1.0, (3, 5, 64), &gpu).unwrap();
    let x = candle_core::Var::from_tensor(&x).unwrap();
    let g = Tensor::randn(1f32, 0.1, 64, &gpu).unwrap();
    let b = Tensor::randn(0f32, 0.1, 64, &gpu).unwrap();
    let w_out_in = Tensor::randn(0f32, 0.2, (64, 64), &gpu).unwrap();
    let w_in_out = Tensor::randn(0f32, 0.2, (64, 64), &gpu).unwrap();
    use lm_kernels::ops::Gelu;
    type Op<'a> = (
        &'a str,
        Box<dyn Fn(&Tensor) -> Tensor + 'a>,
        Box<dyn Fn(&Tensor) -> Tensor + 'a>,
    );
    let cases: Vec<Op> = vec![
        (
            "layer_norm",
            Box::new(|x| ops::layer_norm(x, &g, Some(&b), 1e-5).unwrap()),
            Box::new(|x| composite::layer_norm(x, &g, Some(&b), 1e-5).unwrap()),
        ),
        (
            "rms_norm",
            Box::new(|x| ops::rms_norm(x, &g, 1e-6).unwrap()),
            Box::new(|x| composite::rms_norm(x, &g, 1e-6).unwrap()),
        ),
        (
            "softmax_last_dim",
            Box::new(|x| ops::softmax_last_dim(x).unwrap()),
            Box::new(|x| composite::softmax_last_dim(x).unwrap()),
        ),
        (
            "gelu",
            Box::new(|x| ops::gelu(x).unwrap()),
            Box::new(|x| composite::gelu(x).unwrap()),
        ),
        (
            "bias_gelu",
            Box::new(|x| ops::gelu(&ops::add_bias(x, &b).unwrap()).unwrap()),
            Box::new(|x| composite::gelu(&x.broadcast_add(&b).unwrap()).unwrap()),
        ),
        (
            "gelu_erf",
            Box::new(|x| ops::gelu_erf(x).unwrap()),
            Box::new(|x| composite::gelu_erf(x).unwrap()),
        ),
        (
            "linear_gelu (tanh, W [out, in])",
            Box::new(|x| {
                ops::linear_gelu(x, (&w_out_in, Some(&b)), true, Gelu::Tanh, F32).unwrap()
            }),
            Box::new(|x| {
                let y = x.broadcast_matmul(&w_out_in.t().unwrap()).unwrap();
                composite::gelu(&y.broadcast_add(&b).unwrap()).unwrap()
            }),
        ),
        (
            "linear_gelu (erf, W [in, out])",
            Box::new(|x| {
                ops::linear_gelu(x, (&w_in_out, Some(&b)), false, Gelu::Erf, F32).unwrap()
            }),
            Box::new(|x| {
                let y = x.broadcast_matmul(&w_in_out).unwrap();
                composite::gelu_erf(&y.broadcast_add(&b).unwrap()).unwrap()
            }),
        ),
    ];
    // A fixed, uneven upstream gradient, so that the backward is tested beyond its sum.
    let w = Tensor::randn(0f32, 1.0, (3, 5, 64), &gpu).unwrap();
    for (name, fast, reference) in cases {
        let (yf, yr) = (fast(x.as_tensor()), reference(x.as_tensor()));
        let dy = (&yf - &yr).unwrap().abs().unwrap().max_all().unwrap();
        assert!(
            dy.to_scalar::<f32>().unwrap() < 1e-5,
            "{name}: values differ by {dy}"
        );
        let gf = (yf * &w).unwrap().sum_all().unwrap().backward().unwrap();
        let gr = (yr * &w).unwrap().sum_all().unwrap().backward().unwrap();
        let (gf, gr) = (
            gf.get(x.as_tensor()).unwrap(),
            gr.get(x.as_tensor()).unwrap(),
        );
        let d = (gf - gr).unwrap().abs().unwrap().max_all().unwrap();
        assert!(
            d.to_scalar::<f32>().unwrap() < 1e-4,
            "{name}: gradients differ by {d}"
        );
    }
}

#[test]
fn the_cuda_cross_entropy_equals_the_composite_form_in_value_and_gradient() {
    let Some(gpu) = gpu("the_cuda_cross_entropy_equals_the_composite_form_in_value_and_gradient")
    else {
        return;
    };
    // 37 rows over a 5000-token vocabulary (long rows take the 1024-thread blocks), every
    // fifth target ignored. f32 takes lm-kernels' kernels; f64 the composite log-softmax.
    let (rows, vocab) = (37usize, 5000usize);
    let z = (Tensor::randn(0f32, 3.0, (rows, vocab), &gpu).unwrap() + 1.0).unwrap();
    let y: Vec<i64> = (0..rows)
        .map(|r| {
            if r % 5 == 4 {
                -100
            } else {
                ((r * 7919) % vocab) as i64
            }
        })
        .collect();
    let y = Tensor::new(y, &gpu).unwrap();
    let fast = candle_core::Var::from_tensor(&z).unwrap();
    let slow = candle_core::Var::from_tensor(&z.to_dtype(DType::F64).unwrap()).unwrap();
    let lf = cross_entropy(fast.as_tensor(), &y, &CrossEntropy::default()).unwrap();
    let ls = cross_entropy(slow.as_tensor(), &y, &CrossEntropy::default()).unwrap();
    let (a, b) = (
        lf.to_dtype(DType::F64).unwrap().to_scalar::<f64>().unwrap(),
        ls.to_scalar::<f64>().unwrap(),
    );
    assert!((a - b).abs() < 1e-5 * b.abs(), "loss {a} vs {b}");
    let gf = lf.backward().unwrap();
    let gs = ls.backward().unwrap();
    let d = (gf
        .get(fast.as_tensor())
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap()
        - gs.get(slow.as_tensor()).unwrap())
    .unwrap()
    .abs()
    .unwrap()
    .max_all()
    .unwrap()
    .to_scalar::<f64>()
    .unwrap();
    assert!(d < 1e-7, "gradients differ by {d}");
}

#[test]
fn the_cuda_adam_update_equals_the_cpu_one() {
    let Some(gpu) = gpu("the_cuda_adam_update_equals_the_cpu_one") else {
        return;
    };
    use lm_optim::{Adam, AdamConfig, Optimizer, ParamGroup};
    // AdamW and AMSGrad-Adam with coupled decay, a clipping factor below 1, 5 steps of the same
    // gradients on both devices: lm-kernels' kernel on the GPU, the fused CPU pass on the CPU.
    let amsgrad = AdamConfig {
        amsgrad: true,
        weight_decay: lm_optim::WeightDecay::Coupled,
        ..AdamConfig::adamw()
    };
    for (name, cfg) in [("adamw", AdamConfig::adamw()), ("amsgrad", amsgrad)] {
        let init = Tensor::randn(0f32, 1.0, (33, 65), &Device::Cpu).unwrap();
        let grads: Vec<Tensor> = (0..5)
            .map(|t| Tensor::randn(0f32, 1.0 + t as f32, (33, 65), &Device::Cpu).unwrap())
            .collect();
        let run = |device: &Device| -> Vec<f32> {
            let p = candle_core::Var::from_tensor(&init.to_device(device).unwrap()).unwrap();
            let group = ParamGroup::new("w", vec![("p".into(), p.clone())], 0.1);
            let mut opt = Adam::new(vec![group], cfg).unwrap();
            for g in &grads {
                let g = g.to_device(device).unwrap();
                let loss = (p.as_tensor() * &g).unwrap().sum_all().unwrap();
                opt.step_scaled(&mut loss.backward().unwrap(), 1e-2, 0.5)
                    .unwrap();
            }
            let out = p.as_tensor().to_device(&Device::Cpu).unwrap();
            out.flatten_all().unwrap().to_vec1().unwrap()
        };
        let (cpu, cuda) = (run(&Device::Cpu), run(&gpu));
        let largest = cpu
            .iter()
            .zip(&cuda)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(largest < 1e-6, "{name}: parameters differ by {largest}");
    }
}

fn train_losses(run_dir: &std::path::Path) -> Vec<f32> {
    MetricsLog::read(&run_dir.join("metrics.jsonl"))
        .unwrap()
        .into_iter()
        .filter(|r| r.val_loss.is_none())
        .map(|r| r.train_loss)
        .collect()
}

#[test]
fn a_tiny_recipe_trains_on_cuda_and_tracks_the_cpu_run() {
    let Some(gpu) = gpu("a_tiny_recipe_trains_on_cuda_and_tracks_the_cpu_run") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let cfg = || {
        let mut c = tiny_config(BUILTIN_SHAKESPEARE, 12);
        c.model.dropout = 0.0;
        c.train.matmul_precision = Precision::Highest;
        c
    };
    Trainer::new(cfg(), &tmp.path().join("cpu"), Device::Cpu)
        .unwrap()
        .train()
        .unwrap();
    Trainer::new(cfg(), &tmp.path().join("cuda"), gpu)
        .unwrap()
        .train()
        .unwrap();
    let (a, b) = (
        train_losses(&tmp.path().join("cpu")),
        train_losses(&tmp.path().join("cuda")),
    );
    assert_eq!(a.len(), 12);
    assert_eq!(a.len(), b.len());
    for (step, (x, y)) in a.iter().zip(&b).enumerate() {
        // Same batches, same initial values, f32 everywhere: only summation order differs,
        // and over 12 AdamW steps that stays within 1e-3 relative.
        assert!(
            (x - y).abs() <= 1e-3 * x.abs(),
            "step {}: cpu {x} vs cuda {y}",
            step + 1
        );
    }
    assert!(b[11] < b[0], "the CUDA run did not learn: {b:?}");
}

#[test]
fn a_checkpoint_written_on_the_gpu_loads_on_the_cpu_and_back() {
    let Some(gpu) = gpu("a_checkpoint_written_on_the_gpu_loads_on_the_cpu_and_back") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    let mut cfg = tiny_config(BUILTIN_SHAKESPEARE, 12);
    cfg.model.dropout = 0.0;
    cfg.train.matmul_precision = Precision::Highest;
    // Stopped at 8 of its 12 steps; resumed below.
    let mut first = Trainer::new(cfg, &run, gpu.clone()).unwrap();
    first.stop_at(8).unwrap();
    first.train().unwrap();
    drop(first);
    let on_cpu = Trainer::open(&run, Device::Cpu)
        .unwrap()
        .evaluate()
        .unwrap();
    let mut back = Trainer::resume(&run, None, gpu).unwrap();
    let on_gpu = back.evaluate().unwrap();
    for (c, g) in [(on_cpu.0, on_gpu.0), (on_cpu.1, on_gpu.1)] {
        assert!((c - g).abs() <= 1e-5 * c.abs(), "eval cpu {c} vs cuda {g}");
    }
    back.train().unwrap();
    assert_eq!(back.step(), 12);
    // And the GPU's continuation is readable on the CPU again.
    let again = Trainer::open(&run, Device::Cpu).unwrap();
    assert_eq!(again.step(), 12);
}
