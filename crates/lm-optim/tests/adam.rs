//! Adam and AdamW against hand computations and the f64 definition, the fused path against the
//! composite one, and the step gated on the device against the host-decided one.

use candle_core::{DType, Device, Tensor, Var};
use lm_optim::{Adam, AdamConfig, Optimizer, ParamGroup};

/// AdamW's first three steps on one scalar, against the chapter's formulas evaluated by hand
/// (in f64, step by step): bias correction and decoupled decay included.
#[test]
fn adamw_first_three_steps_match_hand_computation() {
    let theta0 = 0.5f64;
    let grads = [0.2f64, -0.1, 0.3];
    let (lr, b1, b2, eps, wd) = (0.1, 0.9, 0.99, 1e-8, 0.1);
    let var = Var::new(&[theta0 as f32], &Device::Cpu).unwrap();
    let mut opt = Adam::new(
        vec![ParamGroup::new("w", vec![("w".into(), var.clone())], wd)],
        AdamConfig::adamw().with_betas(b1, b2).with_eps(eps),
    )
    .unwrap();
    // Step 1: m = 0.02, v = 0.0004; m̂ = 0.2, v̂ = 0.04; θ = 0.5·(1 − 0.01) − 0.1·0.2/(0.2 + 1e−8).
    // Step 2: m = 0.018 − 0.01 = 0.008, v = 0.000396 + 0.0001 = 0.000496;
    //         m̂ = 0.008/0.19, v̂ = 0.000496/0.0199.
    // Step 3: m = 0.0072 + 0.03 = 0.0372, v = 0.00049104 + 0.0009 = 0.00139104;
    //         m̂ = 0.0372/0.271, v̂ = 0.00139104/0.029701.
    let theta1 = 0.5 * 0.99 - 0.1 * 0.2 / (0.2 + 1e-8);
    let theta2 = theta1 * 0.99 - 0.1 * (0.008 / 0.19) / ((0.000496f64 / 0.0199).sqrt() + 1e-8);
    let theta3 =
        theta2 * 0.99 - 0.1 * (0.0372 / 0.271) / ((0.00139104f64 / 0.029701).sqrt() + 1e-8);
    for (g, expected) in grads.iter().zip([theta1, theta2, theta3]) {
        let loss = (var.as_tensor() * *g).unwrap().sum_all().unwrap();
        opt.step(&loss.backward().unwrap(), lr).unwrap();
        let got = var.as_tensor().to_vec1::<f32>().unwrap()[0] as f64;
        assert!((got - expected).abs() < 1e-6, "{got} vs {expected}");
    }
    // Hand values: 0.395, then ≈ 0.3065, ≈ 0.2406.
    assert!((theta1 - 0.395).abs() < 1e-7);
}

#[test]
fn fused_and_composite_paths_agree() {
    // The same problem on an f32 parameter (fused) and an f64 one (composite ops).
    let g = [0.3f32, -2.0, 0.01, 5.0];
    let cfg = AdamConfig {
        amsgrad: true,
        ..AdamConfig::adamw()
    };
    let a = Var::new(&[1.0f32, -1.0, 0.5, 2.0], &Device::Cpu).unwrap();
    let b = Var::from_tensor(&a.as_tensor().to_dtype(DType::F64).unwrap()).unwrap();
    let mut oa = Adam::new(
        vec![ParamGroup::new("w", vec![("a".into(), a.clone())], 0.1)],
        cfg,
    )
    .unwrap();
    let mut ob = Adam::new(
        vec![ParamGroup::new("w", vec![("b".into(), b.clone())], 0.1)],
        cfg,
    )
    .unwrap();
    for t in 0..5 {
        let scale = 1.0 + t as f64;
        let ga = Tensor::new(&g, &Device::Cpu).unwrap();
        let la = (a.as_tensor() * (&ga * scale).unwrap())
            .unwrap()
            .sum_all()
            .unwrap();
        let lb = (b.as_tensor() * (ga.to_dtype(DType::F64).unwrap() * scale).unwrap())
            .unwrap()
            .sum_all()
            .unwrap();
        oa.step(&la.backward().unwrap(), 0.05).unwrap();
        ob.step(&lb.backward().unwrap(), 0.05).unwrap();
    }
    let va = a.as_tensor().to_vec1::<f32>().unwrap();
    let vb = b.as_tensor().to_vec1::<f64>().unwrap();
    for (x, y) in va.iter().zip(vb) {
        assert!((*x as f64 - y).abs() < 1e-6, "{x} vs {y}");
    }
}

/// AdamW with β2 = 0.9999 over 100 steps, on the fused (f32 parameter) and composite (f64
/// parameter) paths, against the definition evaluated in f64: m, v, bias corrections,
/// decoupled decay. PyTorch's f32 run stays within 3e−7 of this; computing 1 − β2 after
/// rounding β2 to f32 drifted 5.7e−5 relative.
#[test]
fn adamw_with_beta2_0_9999_tracks_the_f64_definition() {
    let (lr, b1, b2, eps, wd, c) = (1e-2, 0.9, 0.9999, 1e-8, 0.1, 0.05);
    let n = 64;
    let init: Vec<f64> = (0..n)
        .map(|i| ((i * 37 % 23) as f64 - 11.0) / 7.0)
        .collect();
    // Gradient of Σ θ·G_t + ½c·Σθ² with a fixed pseudo-random G_t.
    let g_t = |t: usize, i: usize| (((t * 131 + i * 71) % 97) as f64 - 48.0) / 30.0;
    let (mut theta, mut m, mut v) = (init.clone(), vec![0f64; n], vec![0f64; n]);
    for t in 1..=100 {
        for i in 0..n {
            let g = g_t(t, i) + c * theta[i];
            m[i] = b1 * m[i] + (1.0 - b1) * g;
            v[i] = b2 * v[i] + (1.0 - b2) * g * g;
            let (mh, vh) = (
                m[i] / (1.0 - b1.powi(t as i32)),
                v[i] / (1.0 - b2.powi(t as i32)),
            );
            theta[i] = theta[i] * (1.0 - lr * wd) - lr * mh / (vh.sqrt() + eps);
        }
    }
    for dtype in [DType::F32, DType::F64] {
        let var = Var::from_tensor(
            &Tensor::new(init.as_slice(), &Device::Cpu)
                .unwrap()
                .to_dtype(dtype)
                .unwrap(),
        )
        .unwrap();
        let mut opt = Adam::new(
            vec![ParamGroup::new("w", vec![("w".into(), var.clone())], wd)],
            AdamConfig::adamw().with_betas(b1, b2).with_eps(eps),
        )
        .unwrap();
        for t in 1..=100 {
            let g: Vec<f64> = (0..n).map(|i| g_t(t, i)).collect();
            let g = Tensor::new(g.as_slice(), &Device::Cpu)
                .unwrap()
                .to_dtype(dtype)
                .unwrap();
            let th = var.as_tensor();
            let loss = ((th * &g).unwrap().sum_all().unwrap()
                + (th.sqr().unwrap().sum_all().unwrap() * (0.5 * c)).unwrap())
            .unwrap();
            opt.step(&loss.backward().unwrap(), lr).unwrap();
        }
        let got = var
            .as_tensor()
            .to_dtype(DType::F64)
            .unwrap()
            .to_vec1::<f64>()
            .unwrap();
        for (i, (x, y)) in got.iter().zip(&theta).enumerate() {
            assert!(
                (x - y).abs() <= 1e-5 * y.abs() + 1e-6,
                "{dtype:?} θ[{i}]: {x} vs the definition's {y}"
            );
        }
    }
}

/// A step decided on the device (`step_gated`, the factor a tensor) equals the host-decided one
/// (`step_scaled`) for finite factors, and a non-finite factor skips the step entirely: the
/// parameters, moments and step count after [0.5, NaN, 0.7, ∞, 1.0] equal those after
/// [0.5, 0.7, 1.0] — Adam and AdamW, with and without AMSGrad.
#[test]
fn a_step_gated_on_the_device_equals_the_host_step_and_skips_non_finite_factors() {
    let init = [1.0f32, -1.0, 0.5, 2.0, -0.25, 0.75];
    let grad_at = |t: usize| -> Vec<f32> {
        (0..init.len())
            .map(|i| ((t * 7 + i * 3) % 11) as f32 / 5.0 - 1.0)
            .collect()
    };
    for base in [AdamConfig::adam(), AdamConfig::adamw()] {
        for amsgrad in [false, true] {
            // The composite path (moments as tensors), which the gated step runs on any device.
            let cfg = AdamConfig {
                amsgrad,
                fused: false,
                ..base.with_betas(0.8, 0.95)
            };
            let run = |factors: &[f32], gated: bool| -> (Vec<f32>, Adam) {
                let var = Var::new(&init, &Device::Cpu).unwrap();
                let group = ParamGroup::new("w", vec![("w".into(), var.clone())], 0.1);
                let mut opt = Adam::new(vec![group], cfg).unwrap();
                let mut applied = 0;
                for &f in factors {
                    let g = Tensor::new(grad_at(applied).as_slice(), &Device::Cpu).unwrap();
                    let loss = (var.as_tensor() * &g).unwrap().sum_all().unwrap();
                    let mut grads = loss.backward().unwrap();
                    if gated {
                        let factor = Tensor::new(&[f], &Device::Cpu).unwrap();
                        opt.step_gated(&grads, 0.05, &factor).unwrap();
                    } else {
                        opt.step_scaled(&mut grads, 0.05, f as f64).unwrap();
                    }
                    if f.is_finite() {
                        applied += 1;
                    }
                }
                (var.as_tensor().to_vec1::<f32>().unwrap(), opt)
            };
            let (host, host_opt) = run(&[0.5, 0.7, 1.0], false);
            let (gated, gated_opt) = run(&[0.5, f32::NAN, 0.7, f32::INFINITY, 1.0], true);
            let what = format!("{:?}, amsgrad {amsgrad}", base.weight_decay);
            for (a, b) in host.iter().zip(&gated) {
                assert!((a - b).abs() < 1e-6, "{what}: {a} vs {b}");
            }
            assert_eq!(gated_opt.steps().unwrap(), 3, "{what}");
            // The moments too, and a skipped first step leaves everything untouched.
            let state = |o: &Adam| -> Vec<Vec<f32>> {
                o.state_tensors()
                    .unwrap()
                    .into_iter()
                    .filter(|(n, _)| n != "step")
                    .map(|(_, t)| t.flatten_all().unwrap().to_vec1::<f32>().unwrap())
                    .collect()
            };
            for (a, b) in state(&host_opt).iter().zip(state(&gated_opt).iter()) {
                for (x, y) in a.iter().zip(b) {
                    assert!((x - y).abs() < 1e-6, "{what}: moment {x} vs {y}");
                }
            }
            let (skipped, skipped_opt) = run(&[f32::NAN], true);
            assert_eq!(skipped, init.to_vec(), "{what}");
            assert_eq!(skipped_opt.steps().unwrap(), 0, "{what}");
        }
    }
}

/// `Optimizer::state_bytes` (a count, nothing allocated) equals the bytes of the state tensors a
/// checkpoint would hold, for every update rule: Adam, AMSGrad, AdaFactor factored and full with
/// momentum, SGD with momentum.
#[test]
fn state_bytes_counts_what_the_state_tensors_hold() {
    use lm_optim::{AdaFactor, AdaFactorConfig, Sgd, SgdConfig};
    let make = |which: usize| -> Box<dyn Optimizer> {
        let w = Var::new(&[[0.5f32, -1.0, 2.0], [1.5, 0.25, -0.75]], &Device::Cpu).unwrap();
        let b = Var::new(&[0.1f32, 0.2, 0.3], &Device::Cpu).unwrap();
        let group = vec![ParamGroup::new(
            "all",
            vec![("w".into(), w), ("b".into(), b)],
            0.0,
        )];
        match which {
            0 => Box::new(Adam::new(group, AdamConfig::adamw()).unwrap()),
            1 => Box::new(
                Adam::new(
                    group,
                    AdamConfig {
                        amsgrad: true,
                        ..AdamConfig::adamw()
                    },
                )
                .unwrap(),
            ),
            2 => Box::new(AdaFactor::new(group, AdaFactorConfig::default()).unwrap()),
            3 => Box::new(
                AdaFactor::new(
                    group,
                    AdaFactorConfig {
                        beta1: Some(0.9),
                        ..AdaFactorConfig::default()
                    },
                )
                .unwrap(),
            ),
            _ => Box::new(
                Sgd::new(
                    group,
                    SgdConfig {
                        momentum: 0.9,
                        ..SgdConfig::default()
                    },
                )
                .unwrap(),
            ),
        }
    };
    for which in 0..5 {
        let mut opt = make(which);
        let vars = opt.vars();
        let loss = (vars[0].as_tensor().sqr().unwrap().sum_all().unwrap()
            + vars[1].as_tensor().sum_all().unwrap())
        .unwrap();
        opt.step(&loss.backward().unwrap(), 0.01).unwrap();
        let held: usize = opt
            .state_tensors()
            .unwrap()
            .iter()
            .filter(|(name, _)| name != "step")
            .map(|(_, t)| t.elem_count() * t.dtype().size_in_bytes())
            .sum();
        assert!(held > 0, "optimizer {which} holds no state");
        assert_eq!(opt.state_bytes(), held, "optimizer {which}");
        assert_eq!(lm_optim::state_bytes(opt.as_ref()).unwrap(), held);
    }
}
