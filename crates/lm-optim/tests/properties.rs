//! Optimizer invariants as property tests.

use candle_core::{backprop::GradStore, Device, Tensor, Var};
use lm_optim::clip::{clip_grad_norm, grad_norm};
use lm_optim::{
    AdaFactor, AdaFactorConfig, AdaFactorLr, Adam, AdamConfig, LossScaler, Optimizer, ParamGroup,
    Schedule, Sgd, SgdConfig,
};
use proptest::prelude::*;

/// A gradient store holding exactly `g` for `v` (the gradient of `Σ v ⊙ g`).
fn grads_for(v: &Var, g: &[f32]) -> GradStore {
    let g = Tensor::from_slice(g, v.shape(), &Device::Cpu).unwrap();
    (v.as_tensor() * g)
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap()
}

fn var(data: &[f32], shape: (usize, usize)) -> Var {
    Var::from_tensor(&Tensor::from_slice(data, shape, &Device::Cpu).unwrap()).unwrap()
}

fn values(v: &Var) -> Vec<f32> {
    v.as_tensor().flatten_all().unwrap().to_vec1().unwrap()
}

type DynOpt = Box<dyn Optimizer>;

fn all_optimizers(v: &Var, wd: f64) -> Vec<(&'static str, Box<dyn Optimizer>)> {
    let g = || vec![ParamGroup::new("all", vec![("p".into(), v.clone())], wd)];
    vec![
        (
            "sgd",
            Box::new(
                Sgd::new(
                    g(),
                    SgdConfig {
                        momentum: 0.9,
                        ..Default::default()
                    },
                )
                .unwrap(),
            ),
        ),
        (
            "adam",
            Box::new(Adam::new(g(), AdamConfig::adam()).unwrap()),
        ),
        (
            "adamw",
            Box::new(Adam::new(g(), AdamConfig::adamw()).unwrap()),
        ),
        (
            "amsgrad",
            Box::new(
                Adam::new(
                    g(),
                    AdamConfig {
                        amsgrad: true,
                        ..AdamConfig::adamw()
                    },
                )
                .unwrap(),
            ),
        ),
        (
            "adafactor",
            Box::new(AdaFactor::new(g(), AdaFactorConfig::default()).unwrap()),
        ),
        (
            "adafactor_momentum",
            Box::new(
                AdaFactor::new(
                    g(),
                    AdaFactorConfig {
                        beta1: Some(0.9),
                        lr: AdaFactorLr::External,
                        ..Default::default()
                    },
                )
                .unwrap(),
            ),
        ),
    ]
}

fn matrix() -> impl Strategy<Value = (usize, usize, Vec<f32>)> {
    (1usize..6, 1usize..6)
        .prop_flat_map(|(m, n)| (Just(m), Just(n), prop::collection::vec(-3f32..3.0, m * n)))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

    #[test]
    fn zero_gradient_and_no_decay_leaves_parameters_still((m, n, theta) in matrix(), lr in 1e-4f64..1.0) {
        let v = var(&theta, (m, n));
        for (name, mut opt) in all_optimizers(&v, 0.0) {
            for _ in 0..3 {
                opt.step(&grads_for(&v, &vec![0.0; m * n]), lr).unwrap();
            }
            prop_assert_eq!(values(&v), theta.clone(), "{} moved", name);
        }
    }

    #[test]
    fn adams_first_step_is_lr_times_sign((m, n, theta) in matrix(), g in prop::collection::vec(prop_oneof![-100f32..-1e-3, 1e-3f32..100.0], 25), lr in 1e-4f64..1e-1) {
        let v = var(&theta, (m, n));
        let g = g[..m * n].to_vec();
        let mut opt = Adam::new(vec![ParamGroup::new("all", vec![("p".into(), v.clone())], 0.0)], AdamConfig::adam()).unwrap();
        opt.step(&grads_for(&v, &g), lr).unwrap();
        for ((a, b), gi) in values(&v).iter().zip(&theta).zip(&g) {
            // m̂ = g, v̂ = g²: the step is η·g/(|g| + ε) = η·sign(g)·(1 − O(ε/|g|)).
            let moved = (b - a) as f64;
            prop_assert!((moved - lr * gi.signum() as f64).abs() <= lr * 1e-4 + 1e-6, "moved {moved}, lr {lr}, g {gi}");
        }
    }

    #[test]
    fn adam_is_invariant_to_scaling_the_loss((m, n, theta) in matrix(), c in 1e-2f32..1e2, seed in 0u64..1000) {
        let gs: Vec<Vec<f32>> = (0..5).map(|t| (0..m * n).map(|i| ((i as u64 * 7919 + t * 104729 + seed) % 997) as f32 / 498.5 - 1.0).collect()).collect();
        let run = |scale: f32| {
            let v = var(&theta, (m, n));
            let mut opt = Adam::new(vec![ParamGroup::new("all", vec![("p".into(), v.clone())], 0.0)], AdamConfig::adam().with_eps(1e-12)).unwrap();
            for g in &gs {
                let g: Vec<f32> = g.iter().map(|x| x * scale).collect();
                opt.step(&grads_for(&v, &g), 1e-2).unwrap();
            }
            values(&v)
        };
        for (a, b) in run(1.0).iter().zip(run(c)) {
            prop_assert!((a - b).abs() <= 2e-6 * (1.0 + a.abs()), "{a} vs {b} at scale {c}");
        }
    }

    /// `step_scaled(g, c)` is `step(c·g)`, for every optimizer (Adam's fused and composite
    /// updates fold `c` in; the others scale the gradients first), over three steps.
    #[test]
    fn scaled_step_equals_step_on_scaled_gradients((m, n, g) in matrix(), c in 0.01f64..1.0, wd in 0.0f64..0.1) {
        let p0: Vec<f32> = (0..m * n).map(|i| (i as f32 * 0.37).sin()).collect();
        let (va, vb) = (var(&p0, (m, n)), var(&p0, (m, n)));
        // Adam is nearly invariant to the gradient's scale; with ε = 1 its update is not, so a
        // dropped factor shows (fused and composite paths).
        let adam = |v: &Var, fused: bool| -> Box<dyn Optimizer> {
            let cfg = AdamConfig { fused, eps: 1.0, ..AdamConfig::adamw() };
            Box::new(Adam::new(vec![ParamGroup::new("all", vec![("p".into(), v.clone())], wd)], cfg).unwrap())
        };
        let pairs: Vec<(&str, DynOpt, DynOpt)> = all_optimizers(&va, wd)
            .into_iter()
            .zip(all_optimizers(&vb, wd))
            .map(|((name, a), (_, b))| (name, a, b))
            .chain([
                ("adamw-eps1-fused", adam(&va, true), adam(&vb, true)),
                ("adamw-eps1-composite", adam(&va, false), adam(&vb, false)),
            ])
            .collect();
        for (name, mut a, mut b) in pairs {
            let scaled: Vec<f32> = g.iter().map(|x| (*x as f64 * c) as f32).collect();
            for _ in 0..3 {
                a.step_scaled(&mut grads_for(&va, &g), 1e-2, c).unwrap();
                b.step(&grads_for(&vb, &scaled), 1e-2).unwrap();
            }
            for (x, y) in values(&va).iter().zip(values(&vb)) {
                prop_assert!((x - y).abs() <= 1e-5 * (1.0 + y.abs()), "{name}: {x} vs {y}");
            }
            va.set(vb.as_tensor()).unwrap();
        }
    }

    #[test]
    fn clipping_bounds_the_norm_and_spares_small_gradients((m, n, g) in matrix(), max_norm in 1e-2f64..10.0) {
        let v = var(&vec![0.0; m * n], (m, n));
        let mut grads = grads_for(&v, &g);
        let before = grad_norm(&grads, std::slice::from_ref(&v)).unwrap();
        let reported = clip_grad_norm(&mut grads, std::slice::from_ref(&v), max_norm).unwrap();
        prop_assert!((reported - before).abs() < 1e-9);
        let after = grad_norm(&grads, std::slice::from_ref(&v)).unwrap();
        prop_assert!(after <= max_norm * (1.0 + 1e-6), "{after} > {max_norm}");
        if before <= max_norm {
            let g2: Vec<f32> = grads.get(v.as_tensor()).unwrap().flatten_all().unwrap().to_vec1().unwrap();
            prop_assert_eq!(g2, g);
        }
    }

    #[test]
    fn adafactor_factored_estimate_is_exact_for_rank_one(u in prop::collection::vec(0.1f32..3.0, 2..6), w in prop::collection::vec(0.1f32..3.0, 2..6), signs in prop::collection::vec(any::<bool>(), 36), lr in 1e-3f64..1e-1) {
        // G = u wᵀ with arbitrary signs keeps G² = (u²)(w²)ᵀ rank one, so V̂ = G² exactly at
        // step 1 (β2_1 = 0) and the update is G/|G| = sign(G): every coordinate moves by lr.
        let (m, n) = (u.len(), w.len());
        let g: Vec<f32> = (0..m * n).map(|k| u[k / n] * w[k % n] * if signs[k] { 1.0 } else { -1.0 }).collect();
        let v = var(&vec![0.5; m * n], (m, n));
        let cfg = AdaFactorConfig { lr: AdaFactorLr::External, scale_parameter: false, eps1: 0.0, ..Default::default() };
        let mut opt = AdaFactor::new(vec![ParamGroup::new("all", vec![("p".into(), v.clone())], 0.0)], cfg).unwrap();
        opt.step(&grads_for(&v, &g), lr).unwrap();
        for (a, gi) in values(&v).iter().zip(&g) {
            let moved = 0.5 - *a as f64;
            prop_assert!((moved - lr * gi.signum() as f64).abs() < 1e-5 * lr + 1e-7, "moved {moved} for g {gi}");
        }
        // O(m + n) memory.
        prop_assert_eq!(opt.state_bytes(), 4 * (m + n));
    }

    #[test]
    fn schedules_are_continuous_bounded_and_hit_their_endpoints(peak in 1e-5f64..1.0, floor_frac in 0.0f64..1.0, warmup in 0u32..500, extra in 1u32..5000) {
        let (warmup, total) = (warmup as f64, (warmup + extra) as f64);
        let floor = peak * floor_frac;
        for s in [Schedule::warmup_cosine(peak, floor, warmup, total).unwrap(), Schedule::warmup_linear(peak, warmup, total).unwrap()] {
            let end = if matches!(&s, Schedule::Sequence(p) if matches!(p[1], Schedule::Cosine { .. })) { floor } else { 0.0 };
            prop_assert!(s.value(0.0) == 0.0 || warmup == 0.0);
            prop_assert!((s.value(warmup) - peak).abs() <= 1e-12 * peak.max(1.0));
            prop_assert!((s.value(total) - end).abs() <= 1e-12);
            let eps = 1e-9;
            prop_assert!((s.value(warmup - eps) - s.value(warmup + eps)).abs() < 1e-6 * peak + 1e-12);
            let mut x = 0.0;
            while x <= total + 10.0 {
                prop_assert!(s.value(x) >= 0.0);
                x += (total / 97.0).max(1.0);
            }
        }
    }

    #[test]
    fn the_loss_scaler_never_applies_a_non_finite_step(bad_at in 0usize..6, which in 0usize..3) {
        let v = var(&[1.0, 2.0, 3.0, 4.0], (2, 2));
        let mut opt = Adam::new(vec![ParamGroup::new("all", vec![("p".into(), v.clone())], 0.0)], AdamConfig::adam()).unwrap();
        let mut scaler = LossScaler::default();
        for t in 0..6 {
            let mut g = [0.5f32; 4];
            if t == bad_at {
                g[which] = [f32::INFINITY, f32::NEG_INFINITY, f32::NAN][which];
            }
            let scaled: Vec<f32> = g.iter().map(|x| x * scaler.scale() as f32).collect();
            let before = values(&v);
            let steps = opt.steps().unwrap();
            let applied = scaler.step(&mut opt, &mut grads_for(&v, &scaled), 1e-2).unwrap();
            prop_assert_eq!(applied, t != bad_at);
            if !applied {
                prop_assert_eq!(values(&v), before);
                prop_assert_eq!(opt.steps().unwrap(), steps);
            }
        }
        prop_assert_eq!(scaler.scale(), 32768.0);
    }

    #[test]
    fn save_load_step_equals_an_uninterrupted_step((m, n, theta) in matrix(), seed in 0u64..1000) {
        let gs: Vec<Vec<f32>> = (0..4).map(|t| (0..m * n).map(|i| ((i as u64 * 31 + t * 17 + seed) % 101) as f32 / 50.0 - 1.0).collect()).collect();
        let dir = std::env::temp_dir().join(format!("lm-optim-prop-{}-{seed}-{m}x{n}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let a = var(&theta, (m, n));
        let b = var(&theta, (m, n));
        let opts_a = all_optimizers(&a, 0.01);
        for (i, (name, mut oa)) in opts_a.into_iter().enumerate() {
            a.set(&Tensor::from_slice(&theta, (m, n), &Device::Cpu).unwrap()).unwrap();
            b.set(&Tensor::from_slice(&theta, (m, n), &Device::Cpu).unwrap()).unwrap();
            for g in &gs[..2] { oa.step(&grads_for(&a, g), 1e-2).unwrap(); }
            let path = dir.join(format!("{name}.safetensors"));
            lm_optim::save_state(oa.as_ref(), &path).unwrap();
            // A fresh optimizer over a parameter with the same values, then the saved state.
            b.set(a.as_tensor()).unwrap();
            let (_, mut ob) = all_optimizers(&b, 0.01).swap_remove(i);
            lm_optim::load_state(ob.as_mut(), &path, &Device::Cpu).unwrap();
            for g in &gs[2..] {
                oa.step(&grads_for(&a, g), 1e-2).unwrap();
                ob.step(&grads_for(&b, g), 1e-2).unwrap();
            }
            prop_assert_eq!(values(&a), values(&b), "{} diverged after resume", name);
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

#[test]
fn bad_configurations_are_refused() {
    let v = var(&[1.0], (1, 1));
    let g = || vec![ParamGroup::new("all", vec![("p".into(), v.clone())], 0.0)];
    assert!(Adam::new(g(), AdamConfig::adam().with_betas(1.0, 0.999)).is_err());
    assert!(Adam::new(g(), AdamConfig::adam().with_betas(0.9, -0.1)).is_err());
    assert!(Adam::new(g(), AdamConfig::adam().with_eps(0.0)).is_err());
    assert!(Adam::new(
        vec![ParamGroup::new("all", vec![("p".into(), v.clone())], -0.1)],
        AdamConfig::adam()
    )
    .is_err());
    assert!(Sgd::new(
        g(),
        SgdConfig {
            momentum: -1.0,
            ..Default::default()
        }
    )
    .is_err());
    assert!(Sgd::new(
        g(),
        SgdConfig {
            nesterov: true,
            ..Default::default()
        }
    )
    .is_err());
    assert!(AdaFactor::new(
        g(),
        AdaFactorConfig {
            eps2: 0.0,
            ..Default::default()
        }
    )
    .is_err());
    let dup = vec![
        ParamGroup::new("a", vec![("p".into(), v.clone())], 0.0),
        ParamGroup::new("b", vec![("p".into(), v.clone())], 0.0),
    ];
    assert!(Adam::new(dup, AdamConfig::adam()).is_err());
    let mut opt = Adam::new(g(), AdamConfig::adam()).unwrap();
    let grads = grads_for(&v, &[1.0]);
    let e = opt.step(&grads, -1.0).unwrap_err();
    assert!(e.to_string().contains("lr"), "{e}");
}
