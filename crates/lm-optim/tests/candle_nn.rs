//! lm-optim in candle-nn code: `CandleNn<Adam>` is a `candle_nn::Optimizer` (its
//! `backward_step` trains a candle-nn network), built from a `VarMap`, its groups split by the
//! decay rule, and equal step for step to lm-optim's own `Adam` on the same parameters.
#![cfg(feature = "candle-nn")]

use candle_core::{DType, Device, Tensor};
use candle_nn::{Module, Optimizer as _, VarBuilder, VarMap};
use lm_optim::candle_nn_bridge::{groups, named_vars, CandleNn, CandleNnConfig};
use lm_optim::{Adam, AdamConfig, Optimizer};

fn xor() -> (Tensor, Tensor) {
    let dev = Device::Cpu;
    (
        Tensor::new(&[[0f32, 0.], [0., 1.], [1., 0.], [1., 1.]], &dev).unwrap(),
        Tensor::new(&[[0f32], [1.], [1.], [0.]], &dev).unwrap(),
    )
}

#[test]
fn backward_step_trains_a_candle_nn_network_on_xor() {
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    let l1 = candle_nn::linear(2, 8, vb.pp("l1")).unwrap();
    let l2 = candle_nn::linear(8, 1, vb.pp("l2")).unwrap();
    let (x, y) = xor();
    let cfg = CandleNnConfig {
        optimizer: AdamConfig::adamw(),
        lr: 0.05,
        weight_decay: 0.0,
    };
    let mut opt = CandleNn::<Adam>::from_varmap(&varmap, cfg).unwrap();
    let loss = |l1: &candle_nn::Linear, l2: &candle_nn::Linear| {
        let out = l2
            .forward(&l1.forward(&x).unwrap().tanh().unwrap())
            .unwrap();
        (out - &y).unwrap().sqr().unwrap().mean_all().unwrap()
    };
    let first = loss(&l1, &l2).to_scalar::<f32>().unwrap();
    for _ in 0..300 {
        opt.backward_step(&loss(&l1, &l2)).unwrap();
    }
    let last = loss(&l1, &l2).to_scalar::<f32>().unwrap();
    // XOR is learnt: the mean squared error far below the constant guess's 0.25.
    assert!(last < 0.01 && last < first, "{first} -> {last}");
    assert_eq!(opt.learning_rate(), 0.05);
    opt.set_learning_rate(0.01);
    assert_eq!(opt.learning_rate(), 0.01);
}

#[test]
fn the_bridge_steps_as_lm_optims_adam_does() {
    // Two copies of the same parameters: one through candle-nn's interface, one direct.
    let make = || {
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
        let layer = candle_nn::linear(2, 3, vb.pp("fc")).unwrap();
        (varmap, layer)
    };
    let ((va, la), (vb, lb)) = (make(), make());
    // The same starting values.
    for ((_, a), (_, b)) in named_vars(&va).iter().zip(named_vars(&vb).iter()) {
        b.set(a.as_tensor()).unwrap();
    }
    let cfg = CandleNnConfig {
        optimizer: AdamConfig::adamw(),
        lr: 1e-2,
        weight_decay: 0.1,
    };
    let mut bridged = CandleNn::<Adam>::from_varmap(&va, cfg).unwrap();
    let mut direct = Adam::new(groups(named_vars(&vb), 0.1), AdamConfig::adamw()).unwrap();
    let (x, _) = xor();
    for _ in 0..5 {
        let ga = la
            .forward(&x)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        bridged.step(&ga).unwrap();
        let gb = lb
            .forward(&x)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        Optimizer::step(&mut direct, &gb, 1e-2).unwrap();
    }
    for ((n, a), (_, b)) in named_vars(&va).iter().zip(named_vars(&vb).iter()) {
        let (a, b) = (
            a.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            b.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
        );
        assert_eq!(a, b, "{n}");
    }
}
