//! `lm-bench gpt2-ddp BATCH T STEPS`: the data-parallel step of GPT-2 small (124 M parameters,
//! f32, AdamW, clip 1.0) with `BATCH × T` tokens per rank, on the ranks of the MPI launch that
//! started it (`mpirun -np 2 lm-bench gpt2-ddp …`, built with `--features mpi`) or on one
//! process. Rank 0 prints the median step time. The gradients are reduced in buckets as the
//! backward pass makes them final, as the trainer does; `LM_BENCH_REDUCE=after` reduces them
//! after the whole pass instead, `LM_BENCH_REDUCE=none` not at all (each rank steps on its own
//! gradients: the step without communication, the floor). Compare 2 ranks with 1 process at the
//! same per-rank batch and threads (`RAYON_NUM_THREADS=1`): the ratio is what the reduction
//! costs the step. `LM_BENCH_ZERO=1|2|3` shards the optimizer state (and the gradients, and
//! the parameters between steps) as `train.zero_stage` does; every rank then prints what it
//! holds between steps — parameters, the gradients it keeps, its optimizer state — and its peak
//! resident set. At stage 3 the step includes gathering the parameters before the forward pass;
//! with `LM_BENCH_RECOMPUTE=blocks` every block recomputes its activations in backward, and at
//! stage 3 each block's parameters are gathered as it runs (`lm_train::zero3`).

use std::sync::Arc;

use anyhow::Result;
use candle_core::{DType, Device, Var};
use lm_dist::{Strategy, ZeroStage};
use lm_models::gpt::{Gpt, GptConfig};
use lm_models::{MatmulPrecision, ParamStore, Recompute, StepContext};
use lm_objectives::loss::{cross_entropy, CrossEntropy};
use lm_optim::{Adam, AdamConfig, Optimizer, ParamGroup};
use lm_train::zero3::Zero3Gate;

/// Runs the measurement; `args` are the words after `gpt2-ddp`.
pub fn gpt2_ddp(args: &[String]) -> Result<()> {
    let num = |i: usize, d: usize| args.get(i).and_then(|v| v.parse().ok()).unwrap_or(d);
    let (batch, t, steps) = (num(0, 4), num(1, 64), num(2, 5));
    let mode = std::env::var("LM_BENCH_REDUCE").unwrap_or_else(|_| "buckets".into());
    if !["buckets", "after", "none"].contains(&mode.as_str()) {
        anyhow::bail!("LM_BENCH_REDUCE={mode:?}: expected buckets, after or none");
    }
    let comm: Arc<dyn lm_dist::Collective> = Arc::from(lm_dist::from_environment()?);
    let cfg = GptConfig::gpt2_small();
    let store = ParamStore::new(1337);
    let model = Gpt::new(&cfg, store.var_builder(DType::F32, &Device::Cpu))?;
    let vars: Vec<Var> = store.vars().into_iter().map(|(_, v)| v).collect();
    let sizes: Vec<usize> = vars.iter().map(|v| v.elem_count()).collect();
    let (stage, recompute) = settings()?;
    let strategy = Arc::new(Strategy::new(comm.clone(), stage, &sizes));
    let gated = strategy.parameters_sharded() && recompute != Recompute::Nothing;
    let mut plan = None;
    strategy.broadcast_parameters(&vars)?;
    let owned = strategy.owned(&vars);
    let mine: Vec<(String, Var)> = store
        .vars()
        .into_iter()
        .filter(|(_, v)| owned.contains(&v.as_tensor().id()))
        .collect();
    let mut opt = Adam::new(vec![ParamGroup::new("all", mine, 0.1)], AdamConfig::adamw())?;
    let (mut grads_held, mut params_held) = (0, 0);
    // Each rank its own rows (tokens drawn below a vocabulary one smaller per rank).
    let (x, y) = super::random_batch(cfg.vocab_size - comm.rank(), batch, t, &Device::Cpu)?;
    let ctx = StepContext::train(MatmulPrecision::Highest, 0, 0).with_recompute(recompute);
    let mut times = vec![];
    for _ in 0..steps {
        strategy.barrier()?;
        let start = std::time::Instant::now();
        let gate = match gated {
            true => Some(Zero3Gate::start(strategy.clone(), &vars, plan.clone())?),
            false => {
                strategy.gather_parameters(&vars)?;
                None
            }
        };
        let logits = match &gate {
            Some(g) => g.forward(|| model.forward(&x, &ctx))?,
            None => model.forward(&x, &ctx)?,
        };
        let loss = cross_entropy(&logits, &y, &CrossEntropy::default())?;
        let loss = (loss / comm.world_size() as f64)?;
        let mut grads = backward(&loss, &mode, (&strategy, &vars), gate.as_ref())?;
        if let Some(learned) = gate.and_then(|g| g.learned_plan()) {
            plan = Some(learned);
        }
        // Clipping as the trainer does it: a factor Adam applies inside its fused update.
        let (host_sq, _) = lm_optim::clip::sum_squares(&grads, &vars)?;
        let (host_sq, _) = strategy.sum_squares(host_sq, None, &Device::Cpu)?;
        let factor = lm_optim::clip::clip_factor(host_sq.sqrt(), 1.0)?;
        opt.step_scaled(&mut grads, 6e-4, factor)?;
        strategy.after_step(&vars)?;
        times.push(start.elapsed().as_secs_f64());
        grads_held = vars
            .iter()
            .filter_map(|v| grads.get(v.as_tensor()))
            .map(|g| g.elem_count() * 4)
            .sum::<usize>();
        params_held = vars
            .iter()
            .filter(|v| !strategy.parameters_sharded() || owned.contains(&v.as_tensor().id()))
            .map(|v| v.elem_count() * 4)
            .sum::<usize>();
    }
    // Read before the check below, which copies every parameter twice.
    let peak = lm_train::memory::peak_rss_bytes().map_or(f64::NAN, |b| b as f64);
    strategy.gather_parameters(&vars)?;
    if mode != "none" && strategy.ranks_differing(&vars)? != 0 {
        anyhow::bail!("the ranks' parameters differ after {steps} steps");
    }
    times.sort_by(f64::total_cmp);
    let held = [params_held, grads_held, lm_optim::state_bytes(&opt)?];
    print_holdings(comm.rank(), stage, held, peak);
    if comm.rank() == 0 {
        println!(
            "gpt2-ddp {} rank(s) × {batch}×{t} tokens, {} threads, reduction {}: {:.3} s/step \
             (median of {steps}; all {:?})",
            comm.world_size(),
            rayon::current_num_threads(),
            mode,
            times[times.len() / 2],
            times
                .iter()
                .map(|s| (s * 1000.0).round() / 1000.0)
                .collect::<Vec<_>>()
        );
    }
    Ok(())
}

/// The backward pass of `loss` with the gradients reduced as `mode` says (in buckets during
/// the pass, after it, or not at all), through the ZeRO-3 gate when there is one.
fn backward(
    loss: &candle_core::Tensor,
    mode: &str,
    (strategy, vars): (&Strategy, &[Var]),
    gate: Option<&std::rc::Rc<Zero3Gate>>,
) -> Result<candle_core::backprop::GradStore> {
    let gated = |f: &mut dyn FnMut() -> candle_core::Result<_>| match gate {
        Some(gate) => gate.backward(f),
        None => f(),
    };
    if mode != "buckets" {
        let mut g = gated(&mut || loss.backward_freeing_graph())?;
        if mode == "after" {
            strategy.reduce_gradients(vars, &mut g)?;
        }
        return Ok(g);
    }
    let mut reduction = strategy.reduction(vars, None);
    let mut g = gated(&mut || {
        loss.backward_freeing_graph_with(&mut |id, g| {
            reduction.ready(id, g).map_err(candle_core::Error::wrap)
        })
    })?;
    reduction.finish(&mut g)?;
    Ok(g)
}

/// The ZeRO stage (`LM_BENCH_ZERO`) and the blocks that recompute (`LM_BENCH_RECOMPUTE`).
fn settings() -> Result<(ZeroStage, Recompute)> {
    let stage = match std::env::var("LM_BENCH_ZERO").as_deref() {
        Err(_) | Ok("0") => ZeroStage::Replicated,
        Ok("1") => ZeroStage::OptimizerState,
        Ok("2") => ZeroStage::Gradients,
        Ok("3") => ZeroStage::Parameters,
        Ok(other) => anyhow::bail!("LM_BENCH_ZERO={other:?}: expected 0, 1, 2 or 3"),
    };
    let recompute = match std::env::var("LM_BENCH_RECOMPUTE").as_deref() {
        Err(_) | Ok("none") => Recompute::Nothing,
        Ok("blocks") => Recompute::EveryNthBlock(1),
        Ok(other) => anyhow::bail!("LM_BENCH_RECOMPUTE={other:?}: expected none or blocks"),
    };
    Ok((stage, recompute))
}

/// One rank's line: its parameters, the gradients it keeps and its optimizer state (bytes), and
/// its peak resident set.
fn print_holdings(rank: usize, stage: ZeroStage, [params, grads, state]: [usize; 3], peak: f64) {
    let mib = |b: usize| lm_train::memory::mib(b as f64);
    println!(
        "rank {rank} ({stage:?}): parameters {:.0} MiB, gradients kept {:.0} MiB, optimizer \
         state {:.0} MiB, together {:.0} MiB; peak RSS {:.0} MiB",
        mib(params),
        mib(grads),
        mib(state),
        mib(params + grads + state),
        lm_train::memory::mib(peak)
    );
}
