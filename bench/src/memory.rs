//! `lm-bench gpt2-memory BATCH T CHECKPOINTING STEPS`: GPT-2 small (124 M parameters, the
//! 50 257-token vocabulary) training steps in f32 on the CPU, one process — AdamW (λ 0.1), clip
//! 1.0, no dropout, the graph freed during backward as the trainer does — with `CHECKPOINTING` `none`, `blocks` or N (every N-th block recomputes).
//! Prints the median step time, the state the memory account counts (parameters, gradients,
//! Adam's moments) and the peak resident set, whose difference is what activations and
//! temporaries took (`LM_BENCH_TRACE=1`: the resident set and the bytes allocated after each
//! phase of each step and after every 12 gradients made final; `LM_BENCH_STORAGE=1`: the
//! gradients whose buffer holds more than their values;
//! `LM_BENCH_WHOLE_HEAD=1`: the head's logits made whole, as below the trainer's threshold). With
//! recomputation transparent huge pages are off, as in the trainer (`LM_BENCH_SMALL_PAGES=1`:
//! without recomputation too). Run it under `farm-bench` for whole-process figures.

use anyhow::Result;
use candle_core::backprop::GradStore;
use candle_core::Var;
use lm_models::{MatmulPrecision, Recompute, StepContext};
use lm_train::memory::{mib, peak_rss_bytes};

/// With `LM_BENCH_TRACE` set: the resident set and its peak so far after `what`, on stderr.
fn trace(what: &str) {
    if std::env::var_os("LM_BENCH_TRACE").is_none() {
        return;
    }
    let now = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kib = |key: &str| {
        now.lines()
            .find_map(|l| l.strip_prefix(key))
            .map_or("?".to_string(), |v| v.trim().to_string())
    };
    #[cfg(not(target_vendor = "apple"))]
    let (live, peak) = crate::counting::live_and_peak();
    #[cfg(target_vendor = "apple")]
    let (live, peak) = (0, 0);
    eprintln!(
        "{what}: RSS {}, peak {}; allocated {:.0} MiB, at most {:.0} MiB since the last line",
        kib("VmRSS:"),
        kib("VmHWM:"),
        mib(live as f64),
        mib(peak as f64)
    );
}

/// Runs the measurement; `args` are the words after `gpt2-memory`.
pub fn gpt2_memory(args: &[String]) -> Result<()> {
    let num = |i: usize, d: usize| args.get(i).and_then(|v| v.parse().ok()).unwrap_or(d);
    let (batch, t, steps) = (num(0, 1), num(1, 1024), num(3, 3));
    let recompute = match args.get(2).map(String::as_str) {
        None | Some("none") => Recompute::Nothing,
        Some("blocks") => Recompute::EveryNthBlock(1),
        Some(n) => Recompute::EveryNthBlock(n.parse()?),
    };
    // `LM_BENCH_KEEP_GRAPH`: candle's own backward, which keeps every activation to its end.
    let keep_graph = std::env::var_os("LM_BENCH_KEEP_GRAPH").is_some();
    // `LM_BENCH_WHOLE_HEAD`: the logits made whole even past the trainer's chunking threshold.
    let whole_head = std::env::var_os("LM_BENCH_WHOLE_HEAD").is_some();
    // As the trainer does: a run that recomputes to save memory has no transparent huge pages
    // (`LM_BENCH_SMALL_PAGES=1`: also without recomputation, to compare like with like).
    if recompute != Recompute::Nothing || std::env::var_os("LM_BENCH_SMALL_PAGES").is_some() {
        lm_kernels::memory::disable_huge_pages();
    }
    trace("start");
    let mut run = crate::gpt2::Gpt2Run::new(batch, t)?;
    trace("model and optimizer built");
    let ctx = StepContext::train(MatmulPrecision::Highest, 0, 0).with_recompute(recompute);
    let mut times = vec![];
    let mut last = 0.0;
    for _ in 0..steps {
        let start = std::time::Instant::now();
        let loss = run.loss(&ctx, whole_head)?;
        trace("forward");
        let mut grads = if keep_graph {
            loss.backward()?
        } else {
            // Traced as each parameter's gradient is final (after each recomputed block).
            let mut announced = 0;
            loss.backward_freeing_graph_with(&mut |_, _| {
                announced += 1;
                if announced % 12 == 0 {
                    trace(&format!("  backward, {announced} gradients final"));
                }
                Ok(())
            })?
        };
        trace("backward");
        if std::env::var_os("LM_BENCH_STORAGE").is_some() {
            eprintln!(
                "grads whose storage is larger: {:?}",
                oversized_gradients(&run.vars, &grads)
            );
        }
        run.update(&mut grads)?;
        trace("optimizer step");
        last = loss.to_scalar::<f32>()?;
        times.push(start.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    let params: usize = run.vars.iter().map(|v| v.elem_count() * 4).sum();
    let state = 2 * params + lm_optim::state_bytes(&run.opt)?;
    let peak = peak_rss_bytes().map_or(f64::NAN, |b| b as f64);
    println!(
        "gpt2-memory batch {batch}×{t}, checkpointing {recompute:?}: {:.2} s/step (median of \
         {steps}), last loss {last:.3}; parameters + gradients + Adam state {:.0} MiB, peak RSS \
         {:.0} MiB, the rest {:.0} MiB",
        times[times.len() / 2],
        mib(state as f64),
        mib(peak),
        mib(peak - state as f64)
    );
    Ok(())
}

/// The gradients whose buffer holds more than their values (a view into a larger buffer keeps
/// all of it alive until the optimizer step): shape, buffer length, contiguous.
fn oversized_gradients(vars: &[Var], grads: &GradStore) -> Vec<(Vec<usize>, usize, bool)> {
    let mut over = vec![];
    for g in vars.iter().filter_map(|v| grads.get(v.as_tensor())) {
        let (st, l) = g.storage_and_layout();
        if let candle_core::Storage::Cpu(c) = &*st {
            let len = c.as_slice::<f32>().map_or(0, |s| s.len());
            if len != g.elem_count() || !l.is_contiguous() {
                over.push((g.dims().to_vec(), len, l.is_contiguous()));
            }
        }
    }
    over
}
