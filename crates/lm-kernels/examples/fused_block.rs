//! lm-kernels' fused CPU ops in a hand-written attention block — layer norm, causal
//! self-attention over a packed `[b, t, 3d]` projection, GELU — against their composite forms
//! (plain candle ops, what a GPU or Metal device runs): the same values and the same gradients,
//! within f32 rounding.
//!
//! `cargo run --release -p lm-kernels --example fused_block`

use candle_core::{Device, Tensor, Var, D};
use lm_kernels::ops::{self, composite};
use lm_kernels::precision::MatmulPrecision;

fn main() -> anyhow::Result<()> {
    let dev = Device::Cpu;
    let (b, t, d, heads) = (2, 16, 64, 4);
    // Seeded values (lm-optim's keyed initializer): the same run every time.
    let normal = |shape: (usize, usize, usize), std: f64, name: &str| {
        lm_optim::init::normal(shape, std, 7, name, candle_core::DType::F32, &dev)
    };
    let x = Var::from_tensor(&normal((b, t, d), 1.0, "x")?)?;
    let gamma = Tensor::ones(d, candle_core::DType::F32, &dev)?;
    let beta = Tensor::zeros(d, candle_core::DType::F32, &dev)?;
    let w_qkv = normal((1, d, 3 * d), 0.05, "w_qkv")?.squeeze(0)?;
    let scale = 1.0 / ((d / heads) as f64).sqrt();
    let f32_products = MatmulPrecision::Highest;

    // out = GELU(attention(LN(x)·W_qkv)), summed to a scalar so that backward gives ∂/∂x.
    let fused = {
        let h = ops::layer_norm(x.as_tensor(), &gamma, Some(&beta), 1e-5)?;
        let qkv = h.broadcast_matmul(&w_qkv)?;
        ops::gelu_erf(&ops::causal_attention(&qkv, heads, scale, f32_products)?)?
    };
    let plain = {
        let h = composite::layer_norm(x.as_tensor(), &gamma, Some(&beta), 1e-5)?;
        let qkv = h.broadcast_matmul(&w_qkv)?;
        composite::gelu_erf(&composite::causal_attention(
            &qkv,
            heads,
            scale,
            f32_products,
        )?)?
    };
    let largest = |t: &Tensor| -> anyhow::Result<f32> { Ok(t.abs()?.max_all()?.to_scalar()?) };
    let value_diff = largest(&(&fused - &plain)?)?;
    let (gf, gp) = (fused.sum_all()?.backward()?, plain.sum_all()?.backward()?);
    let (gf, gp) = (
        gf.get(x.as_tensor()).unwrap(),
        gp.get(x.as_tensor()).unwrap(),
    );
    let grad_diff = largest(&(gf - gp)?)? / largest(gp)?;
    println!(
        "output {:?}: largest value difference {value_diff:.2e}",
        fused.dims()
    );
    println!("∂Σout/∂x: largest difference {grad_diff:.2e} of its largest entry");
    println!(
        "row 0, token 0, first 4 of {d}: {:?}",
        fused
            .get(0)?
            .get(0)?
            .narrow(D::Minus1, 0, 4)?
            .to_vec1::<f32>()?
    );
    anyhow::ensure!(
        value_diff < 1e-5 && grad_diff < 1e-4,
        "fused and composite forms disagree"
    );
    Ok(())
}
