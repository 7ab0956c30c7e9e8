//! Activation checkpointing: a block whose activations are recomputed in backward
//! ([`Recompute`]) gives the loss and every gradient of the run that keeps them, for each family,
//! with dropout on (the recomputation replays the masks) — and the candle patch under it
//! (`Tensor::checkpoint`, `no_grad`) on a function that captures its variables.

use candle_core::recompute::no_grad;
use candle_core::{DType, Device, Tensor, Var};
use lm_models::bart::{Bart, BartConfig};
use lm_models::bert::{Bert, BertConfig};
use lm_models::gpt::{Gpt, GptConfig};
use lm_models::t5::{T5Config, T5};
use lm_models::EncoderDecoder;
use lm_models::{DropoutKey, MatmulPrecision, ParamStore, Recompute, StepContext};
use lm_objectives::loss::{bert_pretraining_loss, cross_entropy, CrossEntropy};
use std::sync::Arc;

const V: usize = 24;

fn ctx(recompute: Recompute) -> StepContext {
    StepContext {
        precision: MatmulPrecision::Highest,
        dropout: Some(DropoutKey {
            key: 7,
            first_row: 0,
        }),
        recompute,
    }
}

fn u32s(rows: &[&[u32]]) -> Tensor {
    Tensor::from_vec(rows.concat(), (rows.len(), rows[0].len()), &Device::Cpu).unwrap()
}

fn i64s(rows: &[&[i64]]) -> Tensor {
    Tensor::from_vec(rows.concat(), (rows.len(), rows[0].len()), &Device::Cpu).unwrap()
}

/// The loss and each parameter's gradient of a freshly built model (so that its dropout
/// generators start alike) under `recompute`.
type Run = (f32, Vec<(String, Vec<f32>)>);

fn run(
    build: &dyn Fn(&ParamStore, StepContext) -> Tensor,
    recompute: Recompute,
    free_graph: bool,
) -> Run {
    let store = ParamStore::new(5);
    let loss = build(&store, ctx(recompute));
    let grads = if free_graph {
        loss.backward_freeing_graph().unwrap()
    } else {
        loss.backward().unwrap()
    };
    let mut out = vec![];
    for (name, var) in store.vars() {
        let g = grads
            .get(var.as_tensor())
            .unwrap_or_else(|| panic!("{recompute:?}: no gradient for {name}"));
        out.push((name, g.flatten_all().unwrap().to_vec1::<f32>().unwrap()));
    }
    (loss.to_scalar::<f32>().unwrap(), out)
}

/// Every block, every other block and none recompute, the graph kept to the end of the
/// backward pass or freed as it goes (as the trainer does): the same loss (bit for bit: the
/// forward pass is the same arithmetic) and the same gradients within 1e-6 of the largest one.
fn check_family(name: &str, build: &dyn Fn(&ParamStore, StepContext) -> Tensor) {
    let (loss, want) = run(build, Recompute::Nothing, false);
    let (l, freed) = run(build, Recompute::Nothing, true);
    assert_eq!(l.to_bits(), loss.to_bits(), "{name}: loss");
    assert_eq!(freed, want, "{name}: freeing the graph changed a gradient");
    for (recompute, free) in [
        (Recompute::EveryNthBlock(1), false),
        (Recompute::EveryNthBlock(2), false),
        (Recompute::EveryNthBlock(1), true),
        (Recompute::EveryNthBlock(2), true),
    ] {
        let (l, got) = run(build, recompute, free);
        assert_eq!(
            l.to_bits(),
            loss.to_bits(),
            "{name} {recompute:?} free {free}: loss"
        );
        // Relative to the largest gradient of the model: a gradient that is 0 in exact
        // arithmetic (a key bias under softmax) is rounding noise in either run.
        let scale = want
            .iter()
            .flat_map(|(_, w)| w.iter())
            .fold(0f32, |m, x| m.max(x.abs()));
        for ((n, g), (_, w)) in got.iter().zip(&want) {
            let diff = g.iter().zip(w).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
            assert!(
                diff <= 1e-6 * scale,
                "{name} {recompute:?} free {free}: {n} differs by {diff} (largest {scale})"
            );
        }
    }
}

#[test]
fn recomputed_blocks_give_the_gradients_of_kept_ones_in_every_family() {
    let f32 = |s: &ParamStore| s.var_builder(DType::F32, &Device::Cpu);
    let ce = CrossEntropy::default();
    check_family("gpt", &|s, c| {
        let cfg = GptConfig {
            dropout: 0.1,
            ..GptConfig::new(V, 16, 16, 3, 2)
        };
        let m = Gpt::new(&cfg, f32(s)).unwrap();
        let x = u32s(&[&[1, 5, 2, 7, 3, 3], &[0, 4, 4, 6, 1, 2]]);
        let y = i64s(&[&[5, 2, 7, 3, 3, 1], &[4, 4, 6, 1, 2, -100]]);
        cross_entropy(&m.forward(&x, &c).unwrap(), &y, &ce).unwrap()
    });
    check_family("bert", &|s, c| {
        let cfg = BertConfig {
            hidden_dropout_prob: 0.1,
            attention_probs_dropout_prob: 0.1,
            ..BertConfig::sized(V, 16, 3, 2, 32, 32)
        };
        let m = Bert::new(&cfg, f32(s)).unwrap();
        let ids = u32s(&[&[1, 5, 6, 2, 7, 8, 2], &[1, 9, 2, 10, 2, 0, 0]]);
        let tt = u32s(&[&[0, 0, 0, 0, 1, 1, 1], &[0, 0, 0, 1, 1, 0, 0]]);
        let mask = u32s(&[&[1, 1, 1, 1, 1, 1, 1], &[1, 1, 1, 1, 1, 0, 0]]);
        let labels = i64s(&[
            &[-100, 11, -100, -100, 12, -100, -100],
            &[-100, -100, -100, 13, -100, -100, -100],
        ]);
        let nsp = Tensor::new(&[0i64, 1], &Device::Cpu).unwrap();
        let (mlm, ns) = m.forward(&ids, Some(&tt), Some(&mask), &c).unwrap();
        bert_pretraining_loss(&mlm, &labels, &ns, &nsp).unwrap()
    });
    let ids = u32s(&[&[5, 6, 7, 8, 2], &[9, 10, 2, 1, 1]]);
    let mask = u32s(&[&[1, 1, 1, 1, 1], &[1, 1, 1, 0, 0]]);
    let dec = u32s(&[&[2, 11, 12, 13], &[2, 14, 15, 1]]);
    let labels = i64s(&[&[11, 12, 13, 2], &[14, 15, 2, -100]]);
    check_family("bart", &|s, c| {
        let cfg = BartConfig {
            dropout: 0.1,
            activation_dropout: 0.1,
            ..BartConfig::sized(V, 16, 3, 2, 32, 32)
        };
        let m = Bart::new(&cfg, f32(s)).unwrap();
        let logits = m.forward(&ids, Some(&mask), &dec, &c).unwrap();
        cross_entropy(&logits, &labels, &ce).unwrap()
    });
    for ff in ["relu", "gated-gelu"] {
        check_family(&format!("t5 {ff}"), &|s, c| {
            let cfg = T5Config {
                dropout_rate: 0.1,
                num_layers: 3,
                feed_forward_proj: ff.into(),
                tie_word_embeddings: ff == "relu",
                ..T5Config::tiny(V)
            };
            let m = T5::new(&cfg, f32(s)).unwrap();
            let logits = m.forward(&ids, Some(&mask), &dec, &c).unwrap();
            cross_entropy(&logits, &labels, &ce).unwrap()
        });
    }
}

#[test]
fn a_checkpointed_function_back_propagates_into_what_it_captures() {
    let dev = Device::Cpu;
    let x =
        Var::from_tensor(&Tensor::new(&[[0.5f32, -1.0, 2.0], [1.5, 0.25, -0.75]], &dev).unwrap())
            .unwrap();
    let w =
        Var::from_tensor(&Tensor::new(&[[0.3f32, -0.2], [0.1, 0.4], [-0.5, 0.6]], &dev).unwrap())
            .unwrap();
    let b = Var::from_tensor(&Tensor::new(&[0.05f32, -0.1], &dev).unwrap()).unwrap();
    // y = tanh(x·W + b), W and b captured by the function, x its argument.
    let (wc, bc) = (w.as_tensor().clone(), b.as_tensor().clone());
    let f = move |xs: &[Tensor]| xs[0].matmul(&wc)?.broadcast_add(&bc)?.tanh();
    let direct = f(&[x.as_tensor().clone()]).unwrap();
    let kept = (direct.sqr().unwrap().sum_all().unwrap())
        .backward()
        .unwrap();
    let y = Tensor::checkpoint(&[x.as_tensor().clone()], Arc::new(f)).unwrap();
    assert_eq!(
        y.to_vec2::<f32>().unwrap(),
        direct.to_vec2::<f32>().unwrap()
    );
    let recomputed = (y.sqr().unwrap().sum_all().unwrap()).backward().unwrap();
    for v in [&x, &w, &b] {
        let (a, e) = (
            recomputed.get(v.as_tensor()).unwrap(),
            kept.get(v.as_tensor()).unwrap(),
        );
        let d = (a - e).unwrap().abs().unwrap().max_all().unwrap();
        assert!(d.to_scalar::<f32>().unwrap() < 1e-7, "{v:?}");
    }
    // Inside no_grad nothing is recorded: no gradient reaches W.
    let z = no_grad(|| x.as_tensor().matmul(w.as_tensor()).unwrap());
    assert!(!z.track_op());
}
