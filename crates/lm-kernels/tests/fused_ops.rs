//! Each fused CPU kernel equals its composite form in value and in gradient (fp32 tolerance).

use candle_core::{DType, Device, Result, Tensor, Var};
use lm_kernels::ops::{self, composite};
use lm_kernels::precision::MatmulPrecision;

/// f32 products (the default precision).
const F32: MatmulPrecision = MatmulPrecision::Highest;

fn randn(shape: &[usize], seed: u64, std: f64) -> Tensor {
    lm_optim::init::normal(shape, std, seed, "x", DType::F32, &Device::Cpu).unwrap()
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

/// Value and gradients (w.r.t. each input) of `Σ f(inputs) ⊙ w` for a fixed random `w`.
fn value_and_grads(
    f: impl Fn(&[Tensor]) -> Result<Tensor>,
    inputs: &[Tensor],
) -> (Tensor, Vec<Tensor>) {
    let vars: Vec<Var> = inputs
        .iter()
        .map(|t| Var::from_tensor(t).unwrap())
        .collect();
    let ts: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
    let y = f(&ts).unwrap();
    let w = randn(y.dims(), 99, 1.0).to_dtype(y.dtype()).unwrap();
    let grads = (&y * &w).unwrap().sum_all().unwrap().backward().unwrap();
    let gs = vars
        .iter()
        .map(|v| grads.get(v.as_tensor()).unwrap().clone())
        .collect();
    (y, gs)
}

/// The fused kernel in f32 against the composite form evaluated in f64.
fn assert_same(
    fused: impl Fn(&[Tensor]) -> Result<Tensor>,
    reference: impl Fn(&[Tensor]) -> Result<Tensor>,
    inputs: &[Tensor],
    tol: f32,
) {
    let (y1, g1) = value_and_grads(fused, inputs);
    let wide: Vec<Tensor> = inputs
        .iter()
        .map(|t| t.to_dtype(DType::F64).unwrap())
        .collect();
    let (y2, g2) = value_and_grads(reference, &wide);
    let narrow = |t: Tensor| t.to_dtype(DType::F32).unwrap();
    let (y2, g2): (Tensor, Vec<Tensor>) = (narrow(y2), g2.into_iter().map(narrow).collect());
    assert!(
        max_abs_diff(&y1, &y2) < tol,
        "values differ by {}",
        max_abs_diff(&y1, &y2)
    );
    for (i, (a, b)) in g1.iter().zip(&g2).enumerate() {
        assert!(
            max_abs_diff(a, b) < tol,
            "gradient {i} differs by {}",
            max_abs_diff(a, b)
        );
    }
}

#[test]
fn fused_layer_norm_equals_composite() {
    // 150 rows: more than one parallel chunk of rows, so the partial dγ, dβ are summed.
    let x = (randn(&[3, 50, 48], 1, 2.0) + 0.7).unwrap();
    let gamma = (randn(&[48], 2, 0.3) + 1.0).unwrap();
    let beta = randn(&[48], 3, 0.3);
    assert_same(
        |t| ops::layer_norm(&t[0], &t[1], Some(&t[2]), 1e-5),
        |t| composite::layer_norm(&t[0], &t[1], Some(&t[2]), 1e-5),
        &[x, gamma, beta],
        2e-5,
    );
}

#[test]
fn fused_bidirectional_attention_equals_composite_with_padding_and_dropout() {
    // 3 sequences of 20, 4 heads of width 6; the second sequence's last 5 keys are padding,
    // and a dropout mask (rate 0.25, kept entries scaled by 4/3) on the probabilities.
    let (b, t, h, c) = (3usize, 20usize, 4usize, 24usize);
    let qkv = randn(&[b, t, 3 * c], 11, 1.0);
    let bias: Vec<f32> = (0..b * t)
        .map(|i| {
            if i / t == 1 && i % t >= 15 {
                f32::MIN
            } else {
                0.0
            }
        })
        .collect();
    let bias = Tensor::from_vec(bias, (b, t), &Device::Cpu).unwrap();
    let keep: Vec<f32> = (0..b * h * t * t)
        .map(|i| {
            if (i * 2654435761usize).is_multiple_of(4) {
                0.0
            } else {
                4.0 / 3.0
            }
        })
        .collect();
    let keep = Tensor::from_vec(keep, (b, h, t, t), &Device::Cpu).unwrap();
    for (kb, kp) in [
        (None, None),
        (Some(&bias), None),
        (Some(&bias), Some(&keep)),
    ] {
        assert_same(
            |x| ops::self_attention(&x[0], (h, 0.4), kb, kp, F32),
            |x| composite::self_attention(&x[0], (h, 0.4), kb, kp, F32),
            std::slice::from_ref(&qkv),
            2e-5,
        );
    }
}

#[test]
fn fused_biased_attention_equals_composite() {
    // T5's three attentions: encoder self-attention (bias [1, h, t, t] plus padding), the
    // decoder's causal self-attention, and cross-attention (tq ≠ tk), with and without dropout.
    let (b, h, c) = (2usize, 3usize, 12usize);
    for (tq, tk, causal, drop) in [
        (9, 9, false, false),
        (9, 9, true, true),
        (5, 9, false, true),
    ] {
        let q = randn(&[b, tq, c], 21, 1.0);
        let kv = randn(&[b, tk, 2 * c], 22, 1.0);
        let pos = randn(&[1, h, tq, tk], 23, 1.0);
        let pad: Vec<f32> = (0..b * tk)
            .map(|i| if i >= tk + 6 { f32::MIN } else { 0.0 })
            .collect();
        let pad = Tensor::from_vec(pad, (b, 1, 1, tk), &Device::Cpu).unwrap();
        let keep: Vec<f32> = (0..b * h * tq * tk)
            .map(|i| {
                if (i * 2654435761usize).is_multiple_of(5) {
                    0.0
                } else {
                    1.25
                }
            })
            .collect();
        let keep = Tensor::from_vec(keep, (b, h, tq, tk), &Device::Cpu).unwrap();
        let keep = drop.then_some(&keep);
        assert_same(
            |x| {
                let bias = x[2].broadcast_add(&pad.to_dtype(x[2].dtype())?)?;
                ops::biased_attention((&x[0], &x[1]), &bias, (h, 0.7), causal, keep, F32)
            },
            |x| {
                let bias = x[2].broadcast_add(&pad.to_dtype(x[2].dtype())?)?;
                composite::biased_attention((&x[0], &x[1]), &bias, (h, 0.7), causal, keep, F32)
            },
            &[q, kv, pos],
            2e-5,
        );
    }
}

#[test]
fn fused_exact_gelu_equals_composite() {
    // Wide enough for both tails (|x| up to ~12, where erf saturates and φ underflows).
    let x = randn(&[4, 9, 50], 9, 4.0);
    assert_same(
        |t| ops::gelu_erf(&t[0]),
        |t| composite::gelu_erf(&t[0]),
        &[x],
        1e-5,
    );
}

#[test]
fn fused_rms_norm_equals_composite() {
    // 150 rows: more than one parallel chunk of rows, so the partial dγ are summed.
    let x = (randn(&[3, 50, 48], 7, 2.0) + 0.7).unwrap();
    let gamma = (randn(&[48], 8, 0.3) + 1.0).unwrap();
    assert_same(
        |t| ops::rms_norm(&t[0], &t[1], 1e-6),
        |t| composite::rms_norm(&t[0], &t[1], 1e-6),
        &[x, gamma],
        2e-5,
    );
}

#[test]
fn fused_softmax_equals_composite() {
    let x = randn(&[4, 7, 33], 4, 3.0);
    assert_same(
        |t| ops::softmax_last_dim(&t[0]),
        |t| composite::softmax_last_dim(&t[0]),
        &[x],
        1e-6,
    );
}

#[test]
fn fused_causal_softmax_equals_composite_square_and_offset() {
    for (q, k) in [(9, 9), (3, 9), (1, 5)] {
        let x = randn(&[2, 3, q, k], 5, 3.0);
        assert_same(
            |t| ops::causal_softmax(&t[0], 0.25),
            |t| composite::causal_softmax(&t[0], 0.25),
            &[x],
            1e-6,
        );
    }
}

#[test]
fn fused_gelu_equals_composite() {
    let x = randn(&[5, 301], 6, 3.0);
    assert_same(|t| ops::gelu(&t[0]), |t| composite::gelu(&t[0]), &[x], 1e-6);
}

#[test]
fn fused_residual_add_equals_add() {
    let (a, b) = (randn(&[3, 7, 33], 11, 1.0), randn(&[3, 7, 33], 12, 1.0));
    assert_same(
        |t| ops::residual_add(&t[0], &t[1]),
        |t| &t[0] + &t[1],
        &[a, b],
        1e-6,
    );
}

/// Far out in the tails GELU is x or 0 and its slope 1 or 0 — no NaN from the saturated
/// exponential (the AVX-512 kernel clamps it and takes a reciprocal) — and at 0 both are exact.
#[test]
fn fused_gelu_saturates_cleanly() {
    let xs = [-1e4f32, -200.0, -40.0, 0.0, 40.0, 200.0, 1e4];
    let x = Var::from_tensor(&Tensor::new(&xs, &Device::Cpu).unwrap()).unwrap();
    let y = ops::gelu(x.as_tensor()).unwrap();
    let g = y.sum_all().unwrap().backward().unwrap();
    let (y, g) = (
        y.to_vec1::<f32>().unwrap(),
        g.get(x.as_tensor()).unwrap().to_vec1::<f32>().unwrap(),
    );
    for ((&x, &y), &g) in xs.iter().zip(&y).zip(&g) {
        let (want_y, want_g) = if x > 0.0 { (x, 1.0) } else { (0.0, 0.0) };
        let want_g = if x == 0.0 { 0.5 } else { want_g };
        assert!((y - want_y).abs() <= 1e-30, "GELU({x}) = {y}");
        assert!((g - want_g).abs() <= 1e-6, "GELU'({x}) = {g}");
    }
}

#[test]
fn fused_causal_attention_equals_composite() {
    // Odd sizes (t = 13, head width 6, 3 heads) so no loop relies on a multiple of the vector width.
    let qkv = randn(&[2, 13, 3 * 18], 5, 1.5);
    let scale = 1.0 / 6f64.sqrt();
    assert_same(
        |t| ops::causal_attention(&t[0], 3, scale, F32),
        |t| composite::causal_attention(&t[0], 3, scale, F32),
        &[qkv],
        2e-5,
    );
}

#[test]
fn fused_causal_attention_rejects_bad_shapes() {
    let qkv = randn(&[2, 5, 20], 6, 1.0);
    let err = ops::causal_attention(&qkv, 3, 1.0, F32)
        .unwrap_err()
        .to_string();
    assert!(err.contains("not 3·n_head·head_dim"), "{err}");
}

#[test]
fn fused_bias_add_equals_broadcast_add() {
    // A bias over rows, and position embeddings [t, d] over a batch.
    for (x, b) in [(vec![7, 5, 12], vec![12]), (vec![3, 5, 12], vec![5, 12])] {
        assert_same(
            |t| ops::add_bias(&t[0], &t[1]),
            |t| t[0].broadcast_add(&t[1]),
            &[randn(&x, 7, 1.0), randn(&b, 8, 1.0)],
            1e-5,
        );
    }
}

#[test]
fn fused_linear_equals_composite_in_both_layouts() {
    let x = randn(&[3, 5, 7], 11, 1.0);
    let bias = randn(&[4], 12, 1.0);
    for transposed in [false, true] {
        let w = randn(if transposed { &[4, 7] } else { &[7, 4] }, 13, 1.0);
        let reference = |t: &[Tensor]| {
            let w = if transposed { t[1].t()? } else { t[1].clone() };
            t[0].broadcast_matmul(&w)?.broadcast_add(&t[2])
        };
        assert_same(
            |t| ops::linear(&t[0], &t[1], Some(&t[2]), transposed, F32),
            reference,
            &[x.clone(), w.clone(), bias.clone()],
            1e-5,
        );
        // Without a bias.
        assert_same(
            |t| ops::linear(&t[0], &t[1], None, transposed, F32),
            |t| t[0].broadcast_matmul(&if transposed { t[1].t()? } else { t[1].clone() }),
            &[x.clone(), w],
            1e-5,
        );
    }
}

#[test]
fn fused_linear_names_mismatched_shapes() {
    let x = randn(&[2, 7], 1, 1.0);
    let w = randn(&[6, 4], 2, 1.0);
    let err = ops::linear(&x, &w, None, false, F32)
        .unwrap_err()
        .to_string();
    assert!(err.contains("do not fit"), "{err}");
}

/// `t` rounded to IEEE half and widened to f64.
fn to_f16_f64(t: &Tensor) -> Tensor {
    t.to_dtype(DType::F16)
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap()
}

/// FP16 mixed precision in the linear layer: the forward multiplies f16-rounded `x` and `W`,
/// the backward f16-rounded `dy` with them (that rounding is where small gradients underflow
/// without a loss scale), all sums in f32 — against that computed in f64 by hand; the bias
/// gradient is a plain sum of `dy`.
#[test]
fn fused_linear_in_f16_rounds_every_product_operand() {
    let x = randn(&[3, 5, 7], 31, 1.0);
    let w = randn(&[7, 4], 32, 1.0);
    let b = randn(&[4], 33, 1.0);
    let dy = randn(&[3, 5, 4], 34, 1.0);
    let run = |p: MatmulPrecision| {
        let (xv, wv, bv) = (
            Var::from_tensor(&x).unwrap(),
            Var::from_tensor(&w).unwrap(),
            Var::from_tensor(&b).unwrap(),
        );
        let (w, b) = (wv.as_tensor(), Some(bv.as_tensor()));
        let y = ops::linear(xv.as_tensor(), w, b, false, p).unwrap();
        let g = (&y * &dy).unwrap().sum_all().unwrap().backward().unwrap();
        let grad = |v: &Var| g.get(v.as_tensor()).unwrap().clone();
        (y.clone(), grad(&xv), grad(&wv), grad(&bv))
    };
    let (y, dx, dw, db) = run(MatmulPrecision::F16);
    let (xr, wr, dyr) = (to_f16_f64(&x), to_f16_f64(&w), to_f16_f64(&dy));
    let b64 = b.to_dtype(DType::F64).unwrap();
    let y_ref = xr
        .broadcast_matmul(&wr)
        .unwrap()
        .broadcast_add(&b64)
        .unwrap();
    let dx_ref = dyr.broadcast_matmul(&wr.t().unwrap()).unwrap();
    let (x2, dy2) = (xr.reshape((15, 7)).unwrap(), dyr.reshape((15, 4)).unwrap());
    let dw_ref = x2.t().unwrap().matmul(&dy2).unwrap();
    let db_ref = dy.to_dtype(DType::F64).unwrap().sum((0, 1)).unwrap();
    let f32_of = |t: Tensor| t.to_dtype(DType::F32).unwrap();
    for (what, got, want) in [
        ("y", &y, f32_of(y_ref)),
        ("dx", &dx, f32_of(dx_ref)),
        ("dW", &dw, f32_of(dw_ref)),
        ("db", &db, f32_of(db_ref)),
    ] {
        let d = max_abs_diff(got, &want);
        assert!(d < 1e-5, "{what}: {d}");
    }
    // The rounding is real: the f32 layer differs by f16's rounding, not f32's.
    let (y32, dx32, dw32, _) = run(MatmulPrecision::Highest);
    for (what, a, b) in [("y", &y, &y32), ("dx", &dx, &dx32), ("dW", &dw, &dw32)] {
        let d = max_abs_diff(a, b);
        assert!(d > 1e-4 && d < 2e-2, "{what}: f16 against f32 {d}");
    }
}

/// The attention kernels under FP16 (every product rounds, also the per-head ones) stay within
/// f16's rounding of their f32 values, and differ from them (the rounding happens).
#[test]
fn fused_attention_in_f16_is_within_half_rounding_of_f32() {
    let qkv = randn(&[2, 13, 3 * 18], 41, 1.0);
    let q = randn(&[2, 9, 18], 42, 1.0);
    let kv = randn(&[2, 11, 36], 43, 1.0);
    let bias = randn(&[1, 3, 9, 11], 44, 1.0);
    type Op<'a> = Box<dyn Fn(&[Tensor], MatmulPrecision) -> Result<Tensor> + 'a>;
    let cases: Vec<(&str, Op, Vec<Tensor>)> = vec![
        (
            "causal",
            Box::new(|t: &[Tensor], p| ops::causal_attention(&t[0], 3, 0.25, p)),
            vec![qkv.clone()],
        ),
        (
            "bidirectional",
            Box::new(|t: &[Tensor], p| ops::self_attention(&t[0], (3, 0.25), None, None, p)),
            vec![qkv.clone()],
        ),
        (
            "biased",
            Box::new(|t: &[Tensor], p| {
                ops::biased_attention((&t[0], &t[1]), &t[2], (3, 1.0), false, None, p)
            }),
            vec![q, kv, bias],
        ),
    ];
    for (what, op, inputs) in cases {
        let (y16, g16) = value_and_grads(|t: &[Tensor]| op(t, MatmulPrecision::F16), &inputs);
        let (y32, g32) = value_and_grads(|t: &[Tensor]| op(t, F32), &inputs);
        let d = max_abs_diff(&y16, &y32);
        assert!(d > 1e-5 && d < 1e-2, "{what}: value, f16 against f32 {d}");
        for (i, (a, b)) in g16.iter().zip(&g32).enumerate() {
            let d = max_abs_diff(a, b);
            assert!(
                d > 1e-5 && d < 3e-2,
                "{what}: gradient {i}, f16 against f32 {d}"
            );
        }
    }
}

/// Why FP16 needs a loss scale: a gradient of 1e-8 is under f16's smallest subnormal (2^-24 ≈
/// 6e-8), so in f16 products the weight gradient is exactly 0; the same gradient scaled by 2^16
/// survives, and divided by 2^16 afterwards it is the f32 gradient within f16's rounding.
#[test]
fn a_loss_scale_keeps_small_gradients_from_vanishing_in_f16() {
    let x = randn(&[4, 8], 51, 1.0);
    let w = randn(&[8, 3], 52, 1.0);
    let dy = (randn(&[4, 3], 53, 1.0) * 1e-8).unwrap();
    let weight_grad = |p: MatmulPrecision, scale: f64| -> Tensor {
        let wv = Var::from_tensor(&w).unwrap();
        let y = ops::linear(&x, wv.as_tensor(), None, false, p).unwrap();
        let loss = ((&y * &dy).unwrap().sum_all().unwrap() * scale).unwrap();
        let g = loss.backward().unwrap();
        (g.get(wv.as_tensor()).unwrap() / scale).unwrap()
    };
    let exact = weight_grad(MatmulPrecision::Highest, 1.0);
    let unscaled = weight_grad(MatmulPrecision::F16, 1.0);
    let scaled = weight_grad(MatmulPrecision::F16, 65536.0);
    let size = exact.abs().unwrap().max_keepdim(0).unwrap().max(1).unwrap();
    let size: f32 = size.squeeze(0).unwrap().to_scalar().unwrap();
    assert!(size > 1e-8, "the f32 gradient is {size}");
    assert_eq!(max_abs_diff(&unscaled, &exact.zeros_like().unwrap()), 0.0);
    assert!(max_abs_diff(&scaled, &exact) < 2e-3 * size);
}
