//! `cargo xtask bench [SUITE..]`: throughput of every layer, each beside the machine's measured
//! limit, written to `docs/performance-table.md` and `docs/performance.json`.
//!
//! Every figure is the median of several timed runs in this process; ratios (fused vs composite,
//! achieved vs peak) are what to compare across machines.

use std::time::Instant;

mod data;
mod ddp;
mod gemm;
mod gpt2;
mod memory;
mod soak;

use anyhow::Result;
use candle_core::{Device, Tensor, Var};
use lm_objectives::mlm::{MlmConfig, MlmExample, MlmMasker};
use lm_objectives::span_corruption::{
    Sentinels, SpanCorruptionConfig, SpanCorruptionExample, SpanCorruptor,
};
use lm_objectives::Rng;
use lm_optim::{Adam, AdamConfig, Optimizer, ParamGroup};
use serde_json::{json, Value};

/// The same allocator as the `lm-train` command (see there), so the step is timed as it runs.
/// (Not on Apple targets, where no C library is built: `cargo xtask metal-check`.)
/// It counts the bytes allocated and their high-water mark, which `gpt2-memory`'s trace prints
/// (two relaxed atomic additions per call).
#[cfg(not(target_vendor = "apple"))]
#[global_allocator]
static ALLOCATOR: counting::Counting<mimalloc::MiMalloc> = counting::Counting(mimalloc::MiMalloc);

/// An allocator that counts the bytes live in the one it wraps.
#[cfg(not(target_vendor = "apple"))]
mod counting {
    use std::alloc::{GlobalAlloc, Layout};
    use std::sync::atomic::{AtomicUsize, Ordering};

    static LIVE: AtomicUsize = AtomicUsize::new(0);
    static PEAK: AtomicUsize = AtomicUsize::new(0);

    /// The wrapper.
    pub struct Counting<A>(pub A);

    // SAFETY: every call is forwarded to the wrapped allocator unchanged; only counters change.
    unsafe impl<A: GlobalAlloc> GlobalAlloc for Counting<A> {
        // SAFETY: GlobalAlloc's contract, which the caller upholds and the body forwards.
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            // SAFETY: forwarded with the caller's guarantees.
            let p = unsafe { self.0.alloc(layout) };
            if !p.is_null() {
                let now = LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
                PEAK.fetch_max(now, Ordering::Relaxed);
            }
            p
        }

        // SAFETY: GlobalAlloc's contract, which the caller upholds and the body forwards.
        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
            // SAFETY: forwarded with the caller's guarantees.
            unsafe { self.0.dealloc(ptr, layout) }
        }

        // SAFETY: GlobalAlloc's contract, which the caller upholds and the body forwards.
        unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
            // SAFETY: forwarded with the caller's guarantees.
            let p = unsafe { self.0.alloc_zeroed(layout) };
            if !p.is_null() {
                let now = LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
                PEAK.fetch_max(now, Ordering::Relaxed);
            }
            p
        }

        // SAFETY: GlobalAlloc's contract, which the caller upholds and the body forwards.
        unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
            // SAFETY: forwarded with the caller's guarantees.
            let p = unsafe { self.0.realloc(ptr, layout, new_size) };
            if !p.is_null() {
                LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
                let now = LIVE.fetch_add(new_size, Ordering::Relaxed) + new_size;
                PEAK.fetch_max(now, Ordering::Relaxed);
            }
            p
        }
    }

    /// Bytes allocated and not freed, and the most there were since the last call.
    pub fn live_and_peak() -> (usize, usize) {
        let live = LIVE.load(Ordering::Relaxed);
        (live, PEAK.swap(live, Ordering::Relaxed))
    }
}

/// Median seconds of `runs` calls of `f` (after one warm-up call).
fn median_secs(runs: usize, mut f: impl FnMut()) -> f64 {
    f();
    let mut t: Vec<f64> = (0..runs)
        .map(|_| {
            let s = Instant::now();
            f();
            s.elapsed().as_secs_f64()
        })
        .collect();
    t.sort_by(f64::total_cmp);
    t[t.len() / 2]
}

struct Report {
    rows: Vec<(String, String, String, String)>,
    json: serde_json::Map<String, Value>,
}

impl Report {
    fn row(&mut self, suite: &str, what: &str, value: String, vs: String, key: &str, num: f64) {
        println!("{suite:<11} {what:<52} {value:>18}   {vs}");
        self.rows.push((suite.into(), what.into(), value, vs));
        self.json.insert(key.into(), json!(num));
    }
}

/// Measures and reports the machine's limits: returns (f32 FMA peak, memory bandwidth).
fn machine(r: &mut Report) -> Result<(f64, f64)> {
    // Matmul peak: f32 2048³ through candle (the gemm crate).
    let n = 2048;
    let a = Tensor::randn(0f32, 1.0, (n, n), &Device::Cpu)?;
    let b = Tensor::randn(0f32, 1.0, (n, n), &Device::Cpu)?;
    let secs = median_secs(5, || {
        a.matmul(&b).unwrap();
    });
    let matmul = 2.0 * (n * n * n) as f64 / secs;
    // Off x86-64 the matmul rate stands in for the FMA peak.
    let peak = lm_kernels::peak::fma_peak().unwrap_or(matmul);
    r.row(
        "machine",
        "f32 FMA peak, register-only loop, all cores",
        format!("{:.0} GFLOP/s", peak / 1e9),
        "the arithmetic limit (MFU below is against it)".into(),
        "fma_f32_flops",
        peak,
    );
    r.row(
        "machine",
        "f32 matmul 2048³ (candle)",
        format!("{:.0} GFLOP/s", matmul / 1e9),
        format!("REFERENCE: ~250; {:.0}% of FMA peak", 100.0 * matmul / peak),
        "matmul_f32_flops",
        matmul,
    );
    // Memory bandwidth: y ← y + a·x over 64 M f32 (256 MiB per vector), 3 streams.
    let len = 64 << 20;
    let x = vec![1.0f32; len];
    let mut y = vec![0.5f32; len];
    let secs = median_secs(5, || {
        use rayon::prelude::*;
        y.par_chunks_mut(1 << 20)
            .zip(x.par_chunks(1 << 20))
            .for_each(|(y, x)| {
                for (yi, xi) in y.iter_mut().zip(x) {
                    *yi += 0.999 * xi;
                }
            });
    });
    std::hint::black_box(&y);
    let bw = 3.0 * 4.0 * len as f64 / secs;
    r.row(
        "machine",
        "memory bandwidth, y += a·x, 256 MiB vectors, all cores",
        format!("{:.1} GB/s", bw / 1e9),
        "REFERENCE: ~66".into(),
        "bandwidth_bytes_per_s",
        bw,
    );
    Ok((peak, bw))
}

/// The gemm behind the fused kernels at the recipe's MLP shape, against candle's matmul.
fn gemm_kernels(r: &mut Report) -> Result<()> {
    use lm_kernels::cpu_kernels::bf16_matmul_kernel;
    use lm_kernels::ops::matmul_slices;
    use lm_kernels::precision::MatmulPrecision::{Bf16, Highest};
    let (m, k, n) = (768, 128, 512);
    let flops = 2.0 * (m * k * n) as f64;
    let a = Tensor::randn(0f32, 1.0, (m, k), &Device::Cpu)?;
    let b = Tensor::randn(0f32, 1.0, (k, n), &Device::Cpu)?;
    let candle = flops
        / median_secs(15, || {
            a.matmul(&b).unwrap();
        });
    let (av, bv) = (
        a.flatten_all()?.to_vec1::<f32>()?,
        b.flatten_all()?.to_vec1::<f32>()?,
    );
    let at = |p| {
        flops
            / median_secs(15, || {
                matmul_slices(p, &av, &bv, (m, k, n));
            })
    };
    let (ours, bf16) = (at(Highest), at(Bf16));
    r.row(
        "kernels",
        "f32 matmul 768×128×512 (the MLP's shape), candle",
        format!("{:.0} GFLOP/s", candle / 1e9),
        "gemm crate, AVX2".into(),
        "matmul_768x128x512_candle_flops",
        candle,
    );
    r.row(
        "kernels",
        "f32 matmul 768×128×512, our kernel (fused linear and attention)",
        format!("{:.0} GFLOP/s", ours / 1e9),
        format!("{:.2}× candle", ours / candle),
        "matmul_768x128x512_ours_flops",
        ours,
    );
    r.row(
        "kernels",
        &format!(
            "bf16 matmul 768×128×512, f32 accumulation ({})",
            bf16_matmul_kernel()
        ),
        format!("{:.0} GFLOP/s", bf16 / 1e9),
        format!("{:.2}× our f32", bf16 / ours),
        "matmul_768x128x512_bf16_flops",
        bf16,
    );
    Ok(())
}

fn objectives(r: &mut Report) -> Result<()> {
    let (b, l) = (32, 512);
    let mut rng = Rng::seed_from_u64(0);
    let batch: Vec<Vec<u32>> = (0..b)
        .map(|_| (0..l).map(|_| 5 + rng.below(30_000) as u32).collect())
        .collect();
    let mut masker = MlmMasker::new(
        MlmConfig::default(),
        30_522,
        103,
        &[0, 100, 101, 102, 103],
        1,
    )?;
    let mut out = MlmExample::default();
    let secs = median_secs(7, || {
        for _ in 0..20 {
            for s in &batch {
                masker.mask_into(s, &mut out).unwrap();
            }
        }
    });
    let tps = (20 * b * l) as f64 / secs;
    r.row(
        "objectives",
        "MLM masking 15% 80/10/10, 32×512, 1 core",
        format!("{:.1} M tok/s", tps / 1e6),
        format!("{:.0}× HF collator (2.9 M)", tps / 2.9e6),
        "mlm_tokens_per_s",
        tps,
    );

    let cfg = SpanCorruptionConfig::default();
    let (raw, _) = cfg.raw_length_for_inputs(512)?;
    let batch: Vec<Vec<u32>> = (0..b)
        .map(|_| (0..raw).map(|_| 5 + rng.below(30_000) as u32).collect())
        .collect();
    let mut c = SpanCorruptor::new(
        cfg,
        Sentinels {
            first: 32_099,
            count: 100,
            descending: true,
        },
        1,
    )?;
    let mut out = SpanCorruptionExample::default();
    let mut rng = Rng::seed_from_u64(2);
    let secs = median_secs(7, || {
        for _ in 0..20 {
            for s in &batch {
                c.corrupt_into(s, &mut rng, &mut out).unwrap();
            }
        }
    });
    let tps = (20 * b * raw) as f64 / secs;
    r.row(
        "objectives",
        "T5 span corruption 32×568 → 512/114, 1 core",
        format!("{:.1} M tok/s", tps / 1e6),
        format!("{:.0}× T5 numpy (8.3 M)", tps / 8.3e6),
        "span_corruption_tokens_per_s",
        tps,
    );
    Ok(())
}

fn optim(r: &mut Report, bandwidth: f64) -> Result<()> {
    // ~10 M parameters in GPT-like shapes.
    let shapes = [
        (4096usize, 512usize),
        (512, 1536),
        (512, 512),
        (512, 2048),
        (2048, 512),
    ];
    let mut params = vec![];
    let mut n = 0;
    for i in 0..2 {
        for (j, &(a, b)) in shapes.iter().enumerate() {
            let v = Var::from_tensor(&Tensor::randn(0f32, 0.02, (a, b), &Device::Cpu)?)?;
            n += a * b;
            params.push((format!("p{i}.{j}"), v));
        }
    }
    let loss = params
        .iter()
        .try_fold(Tensor::new(0f32, &Device::Cpu)?, |acc, (_, v)| {
            acc + v.as_tensor().sum_all()?
        })?;
    let grads = loss.backward()?;
    for (label, fused) in [("fused in-place", true), ("candle ops", false)] {
        let cfg = AdamConfig {
            fused,
            ..AdamConfig::adamw()
        };
        let mut opt = Adam::new(vec![ParamGroup::new("all", params.clone(), 0.1)], cfg)?;
        let secs = median_secs(5, || opt.step(&grads, 1e-4).unwrap());
        let pps = n as f64 / secs;
        let limit = bandwidth / 28.0;
        r.row(
            "optim",
            &format!("AdamW step, {:.1} M params, {label}", n as f64 / 1e6),
            format!("{:.0} M params/s", pps / 1e6),
            format!(
                "{:.2}× bandwidth limit ({:.0} M/s)",
                limit / pps,
                limit / 1e6
            ),
            &format!(
                "adamw_{}_params_per_s",
                if fused { "fused" } else { "composite" }
            ),
            pps,
        );
    }
    Ok(())
}

/// `", MFU x% of <peak>"` for `flop_per_s` of products at `prec`, against the peak of the loop
/// that bounds them on all of rayon's threads (`lm_kernels::peak::cpu_peak`); empty where no
/// peak is claimed (AMX).
pub(crate) fn mfu_against_peak(
    prec: lm_kernels::precision::MatmulPrecision,
    flop_per_s: f64,
) -> String {
    lm_kernels::peak::cpu_peak(prec, rayon::current_num_threads()).map_or(String::new(), |p| {
        format!(", MFU {:.1}% of {}", 100.0 * flop_per_s / p.flops, p.what)
    })
}

fn train_step(r: &mut Report, peak: f64, recipe: &str, n_embd: usize, steps: usize) -> Result<()> {
    train_step_at(r, peak, recipe, n_embd, steps, "highest")
}

fn train_step_at(
    r: &mut Report,
    peak: f64,
    recipe: &str,
    n_embd: usize,
    steps: usize,
    precision: &str,
) -> Result<()> {
    use lm_train::{config::TrainConfig, data::BUILTIN_SHAKESPEARE, Trainer};
    let mut cfg = TrainConfig::recipe(recipe)?;
    cfg.train.matmul_precision = precision.parse().map_err(anyhow::Error::msg)?;
    cfg.data.corpus = BUILTIN_SHAKESPEARE.into();
    cfg.model.n_embd = n_embd;
    cfg.optim.lr_decay_iters = Some(cfg.lr_decay_iters());
    cfg.train.max_iters = 0;
    let dir =
        std::env::temp_dir().join(format!("lm-bench-{}-{recipe}-{n_embd}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut trainer = Trainer::new(cfg.clone(), &dir, Device::Cpu)?;
    let secs = median_secs(3, || {
        for _ in 0..steps {
            trainer.train_one_step().unwrap();
        }
    }) / steps as f64;
    let _ = std::fs::remove_dir_all(&dir);
    let tokens = (cfg.train.batch_size * cfg.model.block_size) as f64;
    let flops = trainer.flops_per_step();
    let name = match (recipe, n_embd) {
        ("gpt-shakespeare-char", 128) if precision == "bf16" => {
            "gpt-shakespeare-char step (bf16 matmuls, f32 masters)".to_string()
        }
        ("gpt-shakespeare-char", 128) => "gpt-shakespeare-char step (fp32)".to_string(),
        ("gpt-shakespeare-char", d) => format!("GPT n_embd {d}, 4 layers, ctx 64, batch 12 (fp32)"),
        (other, _) if precision == "bf16" => {
            format!("{other} step (bf16 matmuls, f32 masters, the recipe's size)")
        }
        (other, _) => format!("{other} step (fp32, the recipe's size)"),
    };
    // bf16 products against the peak of the loop that bounds them (none claimed on AMX).
    let mfu = if precision == "bf16" {
        mfu_against_peak(lm_kernels::precision::MatmulPrecision::Bf16, flops / secs)
    } else {
        format!(", MFU {:.1}% of FMA peak", 100.0 * flops / secs / peak)
    };
    r.row(
        "train",
        &name,
        format!("{:.1} ms/step", secs * 1e3),
        format!("{:.0} tok/s{mfu}", tokens / secs),
        &format!(
            "train_step_s_{recipe}_{n_embd}{}",
            if precision == "bf16" { "_bf16" } else { "" }
        ),
        secs,
    );
    Ok(())
}

/// `lm-bench gpu [BATCH] [STEPS]`: GPT-2 small (124 M, context 1024) training steps on CUDA
/// device 0 with bf16 products and f32 masters (AdamW, grad clip 1.0, no dropout: nanoGPT's GPU
/// recipe). Prints tokens/s and MFU against the GPU's dense bf16 peak (`LM_BENCH_PEAK_TFLOPS`,
/// default 989, the H100/H200 SXM figure), and writes them as JSON to `$LM_BENCH_JSON` if set.
fn gpu_step(batch: usize, steps: usize) -> Result<()> {
    use lm_kernels::precision::MatmulPrecision;
    use lm_models::gpt::{Gpt, GptConfig};
    use lm_models::ParamStore;
    use lm_objectives::loss::{cross_entropy, CrossEntropy};
    let device = lm_kernels::device::cuda(0).map_err(|e| anyhow::anyhow!("gpu suite: {e}"))?;
    // nanoGPT pads GPT-2's 50257 tokens to 50304, a multiple of 64, for the gemm tiles.
    let cfg = GptConfig {
        vocab_size: 50304,
        ..GptConfig::gpt2_small()
    };
    let t = cfg.n_positions;
    let store = ParamStore::new(1337);
    let model = Gpt::new(&cfg, store.var_builder(candle_core::DType::F32, &device))?;
    let mut opt = Adam::new(
        vec![ParamGroup::new("all", store.vars(), 0.1)],
        AdamConfig::adamw(),
    )?;
    let (x, y) = random_batch(cfg.vocab_size, batch, t, &device)?;
    let vars: Vec<Var> = store.vars().into_iter().map(|(_, v)| v).collect();
    // bf16 products; no dropout (the context's dropout is off).
    let ctx = lm_models::StepContext::eval(MatmulPrecision::Bf16);
    let mut step = || -> Result<f32> {
        let loss = cross_entropy(&model.forward(&x, &ctx)?, &y, &CrossEntropy::default())?;
        let mut grads = loss.backward()?;
        lm_optim::clip::clip_grad_norm(&mut grads, &vars, 1.0)?;
        opt.step(&grads, 6e-4)?;
        Ok(loss.to_scalar::<f32>()?)
    };
    let first = step()?;
    device.synchronize()?;
    let secs = median_secs(3, || {
        for _ in 0..steps {
            step().unwrap();
        }
        device.synchronize().unwrap();
    }) / steps as f64;
    let tok_s = (batch * t) as f64 / secs;
    let peak = std::env::var("LM_BENCH_PEAK_TFLOPS")
        .ok()
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(989.0)
        * 1e12;
    let mfu = cfg.flops_per_token(t) * tok_s / peak;
    println!(
        "gpu         GPT-2 small, batch {batch}×{t}, bf16 products   {:.1} ms/step   {tok_s:.0} tok/s, MFU {:.1}% of {:.0} TFLOP/s (first loss {first:.3})",
        secs * 1e3,
        100.0 * mfu,
        peak / 1e12
    );
    if let Ok(path) = std::env::var("LM_BENCH_JSON") {
        let v = json!({"what": "lm-train GPT-2 small step, bf16 products, f32 masters",
            "batch": batch, "context": t, "step_s": secs, "tokens_per_s": tok_s, "mfu": mfu,
            "peak_flops": peak, "first_loss": first});
        std::fs::write(path, serde_json::to_string_pretty(&v)?)?;
    }
    Ok(())
}

/// A batch of `batch` rows of `t` random tokens below `vocab` (seed 7) and their next tokens:
/// (inputs u32, targets i64), each `[batch, t]` on `device`.
fn random_batch(vocab: usize, batch: usize, t: usize, device: &Device) -> Result<(Tensor, Tensor)> {
    let mut rng = Rng::seed_from_u64(7);
    let tokens: Vec<u32> = (0..batch * (t + 1))
        .map(|_| rng.below(vocab as u64) as u32)
        .collect();
    let seq = Tensor::from_vec(tokens, (batch, t + 1), device)?;
    let x = seq.narrow(1, 0, t)?.contiguous()?;
    let y = seq
        .narrow(1, 1, t)?
        .to_dtype(candle_core::DType::I64)?
        .contiguous()?;
    Ok((x, y))
}

/// "2 × Intel(R) Xeon(R) Processor (AVX-512, AVX512-BF16, AMX-BF16)", from /proc/cpuinfo.
fn cpu_description() -> String {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let field = |key: &str| {
        info.lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split(':').nth(1))
            .map(|v| v.trim().to_string())
    };
    let model = field("model name").unwrap_or_else(|| "an unknown CPU".into());
    let flags = field("flags").unwrap_or_default();
    let has = |f: &str| flags.split_whitespace().any(|x| x == f);
    let features: Vec<&str> = [
        ("avx512f", "AVX-512"),
        ("avx512_bf16", "AVX512-BF16"),
        ("amx_bf16", "AMX-BF16"),
    ]
    .into_iter()
    .filter(|(f, _)| has(f))
    .map(|(_, name)| name)
    .collect();
    format!(
        "{} × {model} ({})",
        std::thread::available_parallelism().map_or(1, |n| n.get()),
        features.join(", ")
    )
}

/// Today's date in UTC as `YYYY-MM-DD` (the civil-from-days algorithm on the Unix clock).
fn utc_date() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let z = (secs / 86_400) as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}")
}

fn main() -> Result<()> {
    // `LM_BENCH_PURGE=1`: the allocator returns freed memory to the system as it does by
    // default (to see what keeping it costs in resident memory).
    if std::env::var_os("LM_BENCH_PURGE").is_none() {
        lm_kernels::memory::keep_freed_memory();
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().is_some_and(|a| a == "gpu") {
        let num = |i: usize, d: usize| args.get(i).and_then(|v| v.parse().ok()).unwrap_or(d);
        return gpu_step(num(1, 8), num(2, 10));
    }
    if args.first().is_some_and(|a| a == "gpt2-ddp") {
        return ddp::gpt2_ddp(&args[1..]);
    }
    if args.first().is_some_and(|a| a == "soak") {
        return soak::soak(&args[1..]);
    }
    if args.first().is_some_and(|a| a == "gpt2-memory") {
        return memory::gpt2_memory(&args[1..]);
    }
    if args.first().is_some_and(|a| a == "corpus") {
        // `lm-bench corpus MB DIR`: a generated corpus for docs/data.md's measurements.
        let mb: u64 = args.get(1).and_then(|v| v.parse().ok()).unwrap_or(1024);
        let dir = args.get(2).map_or("target/bench-corpus", String::as_str);
        return data::write_corpus(std::path::Path::new(dir), mb << 20);
    }
    let want = |s: &str| args.is_empty() || args.iter().any(|a| a == s);
    let mut r = Report {
        rows: vec![],
        json: serde_json::Map::new(),
    };
    let (peak, bw) = machine(&mut r)?;
    if want("objectives") {
        objectives(&mut r)?;
    }
    if want("optim") {
        optim(&mut r, bw)?;
    }
    if want("data") {
        data::data(&mut r)?;
    }
    if want("kernels") {
        gemm_kernels(&mut r)?;
    }
    if want("gemm") {
        gemm::gemm(&mut r)?;
    }
    if want("gpt2") {
        gpt2::gpt2(&mut r)?;
    }
    if args.iter().any(|a| a == "step") {
        // Only the headline figures, for quick before/after comparisons.
        train_step(&mut r, peak, "gpt-shakespeare-char", 128, 20)?;
        train_step_at(&mut r, peak, "gpt-shakespeare-char", 128, 20, "bf16")?;
    }
    if want("train") {
        train_step(&mut r, peak, "gpt-shakespeare-char", 128, 20)?;
        train_step_at(&mut r, peak, "gpt-shakespeare-char", 128, 20, "bf16")?;
        for d in [256, 384, 768] {
            train_step(&mut r, peak, "gpt-shakespeare-char", d, 5)?;
        }
        train_step(&mut r, peak, "bert-mlm-nsp", 128, 10)?;
        train_step(&mut r, peak, "t5-span-corruption", 128, 10)?;
        // bf16 products too: `auto`'s choice on AMX and on AMD's AVX512-BF16.
        train_step_at(&mut r, peak, "bert-mlm-nsp", 128, 10, "bf16")?;
        train_step_at(&mut r, peak, "t5-span-corruption", 128, 10, "bf16")?;
    }
    if args.is_empty() {
        // Only the measured table and how it was measured: the narrative in
        // docs/performance.md is written by hand, with the machine and date of each figure.
        let mut md = format!(
            "# Benchmark table\n\nWritten by `cargo xtask bench` (all suites) on {} ({}), CPU only, \
             {} UTC. Each figure is the median of 3–7 timed runs in one process, after a warm-up \
             run; compare the ratios, which hold across machines better than absolute times.\n\n\
             | suite | what | measured | against |\n| --- | --- | --- | --- |\n",
            cpu_description(),
            std::env::consts::ARCH,
            utc_date(),
        );
        for (s, w, v, vs) in &r.rows {
            md.push_str(&format!("| {s} | {w} | {v} | {vs} |\n"));
        }
        md.push_str("\nThe machine's limits are measured in the same run (first rows): MFU is achieved model FLOP/s\n(6·N + 12·L·d·T per token) over the f32 FMA peak of all cores (a register-only loop, no memory traffic); the optimizer step moves ≈ 28 bytes per\nparameter (read θ, g, m, v; write θ, m, v), so its limit is bandwidth / 28.\n");
        std::fs::write("docs/performance-table.md", md)?;
        std::fs::write(
            "docs/performance.json",
            serde_json::to_string_pretty(&Value::Object(r.json))?,
        )?;
        println!("wrote docs/performance-table.md and docs/performance.json");
    }
    Ok(())
}
