//! The head's cross-entropy in chunks of the vocabulary (`head_cross_entropy`) against the
//! logits made whole (`cross_entropy` of `h Wᵀ`): loss and both gradients, with ignored rows.

use candle_core::{Device, Tensor, Var};
use lm_kernels::precision::MatmulPrecision;
use lm_objectives::loss::{cross_entropy, head_cross_entropy, CrossEntropy, Reduction};

#[test]
fn the_head_in_chunks_equals_the_logits_made_whole() {
    let (b, t, c, v) = (2, 9, 8, 300);
    let val = |i: usize, k: usize| ((i * k + 5) % 23) as f32 / 11.0 - 1.0;
    let h0: Vec<f32> = (0..b * t * c).map(|i| val(i, 7)).collect();
    let w0: Vec<f32> = (0..v * c).map(|i| val(i, 3)).collect();
    let y: Vec<i64> = (0..b * t)
        .map(|i| {
            if i % 5 == 2 {
                -100
            } else {
                (i * 37 % v) as i64
            }
        })
        .collect();
    let targets = Tensor::from_vec(y, (b, t), &Device::Cpu).unwrap();
    for reduction in [Reduction::Mean, Reduction::Sum] {
        let ce = CrossEntropy {
            reduction,
            ..CrossEntropy::default()
        };
        let run = |chunked: bool| {
            let h = Var::from_vec(h0.clone(), (b, t, c), &Device::Cpu).unwrap();
            let w = Var::from_vec(w0.clone(), (v, c), &Device::Cpu).unwrap();
            let loss = if chunked {
                head_cross_entropy(&h, &w, &targets, &ce, MatmulPrecision::Highest)
                    .unwrap()
                    .unwrap()
            } else {
                let logits = h.as_tensor().broadcast_matmul(&w.t().unwrap()).unwrap();
                cross_entropy(&logits, &targets, &ce).unwrap()
            };
            let grads = loss.backward().unwrap();
            let read = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            (
                loss.to_scalar::<f32>().unwrap(),
                read(grads.get(&h).unwrap()),
                read(grads.get(&w).unwrap()),
            )
        };
        let (a, b_) = (run(true), run(false));
        assert!(
            (a.0 - b_.0).abs() <= 1e-5 * b_.0.abs(),
            "{:?}: {} vs {}",
            reduction,
            a.0,
            b_.0
        );
        for (what, x, r) in [("dh", &a.1, &b_.1), ("dW", &a.2, &b_.2)] {
            let scale = r.iter().fold(0f32, |m, v| m.max(v.abs()));
            for (p, q) in x.iter().zip(r) {
                assert!((p - q).abs() <= 1e-5 * scale, "{what}: {p} vs {q}");
            }
        }
    }
    // Label smoothing is not the kernel's: the caller makes the logits.
    let h = Tensor::zeros((1, c), candle_core::DType::F32, &Device::Cpu).unwrap();
    let w = Tensor::zeros((v, c), candle_core::DType::F32, &Device::Cpu).unwrap();
    let smooth = CrossEntropy {
        label_smoothing: 0.1,
        ..CrossEntropy::default()
    };
    let one = Tensor::new(&[1i64], &Device::Cpu).unwrap();
    let none = head_cross_entropy(&h, &w, &one, &smooth, MatmulPrecision::Highest).unwrap();
    assert!(none.is_none());
}
