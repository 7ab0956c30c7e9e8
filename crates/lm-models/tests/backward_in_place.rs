//! The vendored candle accumulates gradients in place where the store holds the sum alone
//! (`vendor/README.md`): an embedding's rows added into a gradient that already holds a tied
//! head's part, and a second product's contribution added into the first. The values must be
//! those of the definition, with repeated ids, with the lookup first or last in the graph, and
//! when the first contribution is shared (the copying path).

use candle_core::{Device, Tensor, Var};

/// `W` 4 × 3 with distinct entries.
fn table() -> Var {
    let v: Vec<f32> = (0..12).map(|i| 0.5 + i as f32 * 0.25).collect();
    Var::from_tensor(&Tensor::from_vec(v, (4, 3), &Device::Cpu).unwrap()).unwrap()
}

fn close(a: &[Vec<f32>], b: &[Vec<f32>]) {
    for (ra, rb) in a.iter().zip(b) {
        for (x, y) in ra.iter().zip(rb) {
            assert!((x - y).abs() < 1e-5, "{a:?} vs {b:?}");
        }
    }
}

#[test]
fn a_tied_embeddings_gradient_adds_the_lookup_rows_to_the_heads_part() {
    let dev = Device::Cpu;
    let w = table();
    let ids = Tensor::new(&[2u32, 0, 2], &dev).unwrap();
    // h = rows of W (ids 2, 0, 2), each row scaled; logits = h · Wᵀ; loss = Σ logits · c.
    let scale = Tensor::new(&[[1f32], [2.0], [3.0]], &dev).unwrap();
    let h = w.embedding(&ids).unwrap().broadcast_mul(&scale).unwrap();
    let logits = h.matmul(&w.as_tensor().t().unwrap()).unwrap();
    let c = Tensor::new(
        &[
            [1f32, -1.0, 0.5, 2.0],
            [0.0, 1.0, -2.0, 1.0],
            [3.0, 0.5, 1.0, -1.0],
        ],
        &dev,
    )
    .unwrap();
    let loss = (logits * &c).unwrap().sum_all().unwrap();
    for free in [false, true] {
        let grads = match free {
            false => loss.backward().unwrap(),
            true => loss.backward_freeing_graph().unwrap(),
        };
        let got: Vec<Vec<f32>> = grads.get(w.as_tensor()).unwrap().to_vec2().unwrap();
        // By hand: ∂/∂W from the head = cᵀ·h; from the lookup, row ids[i] += scale_i · (c_i · W).
        let wv: Vec<Vec<f32>> = w.as_tensor().to_vec2().unwrap();
        let hv: Vec<Vec<f32>> = h.to_vec2().unwrap();
        let cv: Vec<Vec<f32>> = c.to_vec2().unwrap();
        let mut want = vec![vec![0f32; 3]; 4];
        for (i, row) in cv.iter().enumerate() {
            for (j, &cij) in row.iter().enumerate() {
                for k in 0..3 {
                    want[j][k] += cij * hv[i][k];
                }
            }
        }
        for (i, (&id, s)) in [2usize, 0, 2].iter().zip([1f32, 2.0, 3.0]).enumerate() {
            for k in 0..3 {
                let cw: f32 = (0..4).map(|j| cv[i][j] * wv[j][k]).sum();
                want[id][k] += s * cw;
            }
        }
        close(&got, &want);
    }
}

#[test]
fn a_lookup_alone_and_a_shared_first_contribution_give_the_definition() {
    let dev = Device::Cpu;
    let w = table();
    let ids = Tensor::new(&[1i64, 1, 3], &dev).unwrap();
    // Lookup only: rows 1 (twice) and 3 get the upstream gradient (weights 1, 2, 3).
    let weights = Tensor::new(&[[1f32], [2.0], [3.0]], &dev).unwrap();
    let y = w.embedding(&ids).unwrap().broadcast_mul(&weights).unwrap();
    let grads = y.sum_all().unwrap().backward_freeing_graph().unwrap();
    let got: Vec<Vec<f32>> = grads.get(w.as_tensor()).unwrap().to_vec2().unwrap();
    let want = vec![vec![0f32; 3], vec![3.0; 3], vec![0.0; 3], vec![3.0; 3]];
    close(&got, &want);
    // W·a + W·b: the first product's gradient (a) is the store's alone when the second (b)
    // arrives, and is added to in place.
    let (a, b) = (
        Tensor::new(&[1f32, 2.0, 3.0], &dev).unwrap(),
        Tensor::new(&[0.5f32, -1.0, 4.0], &dev).unwrap(),
    );
    let loss = (w.as_tensor().broadcast_mul(&a).unwrap().sum_all().unwrap()
        + w.as_tensor().broadcast_mul(&b).unwrap().sum_all().unwrap())
    .unwrap();
    let grads = loss.backward_freeing_graph().unwrap();
    let got: Vec<Vec<f32>> = grads.get(w.as_tensor()).unwrap().to_vec2().unwrap();
    close(&got, &vec![vec![1.5f32, 1.0, 7.0]; 4]);
    // W + W: the two contributions are one tensor (shared), so the sum must not be added into
    // it in place — the gradient is 2 everywhere, not 4.
    let loss = (w.as_tensor() + w.as_tensor()).unwrap().sum_all().unwrap();
    let grads = loss.backward_freeing_graph().unwrap();
    let got: Vec<Vec<f32>> = grads.get(w.as_tensor()).unwrap().to_vec2().unwrap();
    close(&got, &vec![vec![2f32; 3]; 4]);
}
