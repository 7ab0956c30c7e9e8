//! `lm-bench gemm`: the matrix products of real model sizes — 2048³ and GPT-2 small's
//! projections (768→2304, 768→3072, 3072→768 and the 768→50 257 head, at 256 and 1 024 rows) —
//! through the kernels the fused ops run, f32 and bf16 products (the bf16 kernel is named: AMX,
//! AVX512-BF16 or rounded f32), outputs reused. Run it again under `LM_KERNELS_MAX_ISA=avx512`
//! or `=generic` for the fallbacks. `bench/pytorch/gemm_cpu.py` measures PyTorch at the same
//! shapes (by hand; CI needs no Python); docs/performance.md puts the two side by side.
//! `LM_BENCH_GEMM_SHAPES` measures other products instead.

use anyhow::Result;
use lm_kernels::cpu_kernels::{bf16_matmul_kernel, f32_matmul_kernel};
use lm_kernels::ops::matmul_slices_into;
use lm_kernels::precision::MatmulPrecision;
use lm_objectives::Rng;

use crate::{median_secs, Report};

/// (m, k, n) of each product measured, and its name.
pub const SHAPES: [(&str, (usize, usize, usize)); 9] = [
    ("2048³", (2048, 2048, 2048)),
    ("qkv 256×768×2304", (256, 768, 2304)),
    ("fc 256×768×3072", (256, 768, 3072)),
    ("proj 256×3072×768", (256, 3072, 768)),
    ("head 256×768×50257", (256, 768, 50257)),
    ("qkv 1024×768×2304", (1024, 768, 2304)),
    ("fc 1024×768×3072", (1024, 768, 3072)),
    ("proj 1024×3072×768", (1024, 3072, 768)),
    ("head 1024×768×50257", (1024, 768, 50257)),
];

fn values(n: usize, rng: &mut Rng) -> Vec<f32> {
    (0..n).map(|_| rng.next_f64() as f32 - 0.5).collect()
}

/// FLOP/s of `a · b` at `prec`, median of `runs` after a warm-up.
fn rate(prec: MatmulPrecision, (m, k, n): (usize, usize, usize), runs: usize) -> f64 {
    let mut rng = Rng::seed_from_u64(0);
    let (a, b) = (values(m * k, &mut rng), values(k * n, &mut rng));
    let mut out = vec![0f32; m * n];
    let secs = median_secs(runs, || {
        matmul_slices_into(prec, &mut out, &a, &b, (m, k, n))
    });
    2.0 * (m * k * n) as f64 / secs
}

/// The environment variable that replaces [`SHAPES`]: products as `MxKxN`, comma-separated
/// (e.g. the demo recipe's `768x128x384,768x512x128`).
pub const SHAPES_ENV: &str = "LM_BENCH_GEMM_SHAPES";

/// A product's name and (m, k, n).
type Shape = (String, (usize, usize, usize));

/// The products to measure: [`SHAPES`], or those `LM_BENCH_GEMM_SHAPES` lists.
fn shapes() -> Result<Vec<Shape>> {
    let Ok(list) = std::env::var(SHAPES_ENV) else {
        return Ok(SHAPES.iter().map(|(n, d)| (n.to_string(), *d)).collect());
    };
    list.split(',')
        .map(|item| {
            let dims: Vec<usize> = item
                .trim()
                .split('x')
                .map(|v| v.parse::<usize>())
                .collect::<Result<_, _>>()
                .map_err(|e| anyhow::anyhow!("{SHAPES_ENV}: {item:?} is not MxKxN ({e})"))?;
            // Each operand (m×k, k×n, m×n) non-empty and under 2^34 values.
            let fits = |r: usize, c: usize| r > 0 && r.checked_mul(c).is_some_and(|s| s < 1 << 34);
            match dims[..] {
                [m, k, n] if fits(m, k) && fits(k, n) && fits(m, n) => {
                    Ok((item.trim().to_string(), (m, k, n)))
                }
                _ => anyhow::bail!(
                    "{SHAPES_ENV}: {item:?} is not MxKxN with sizes above 0 and operands under \
                     2^34 values"
                ),
            }
        })
        .collect()
}

/// The rows of the `gemm` suite.
pub fn gemm(r: &mut Report) -> Result<()> {
    let kernels = format!(
        "f32: {}, bf16: {}",
        f32_matmul_kernel(),
        bf16_matmul_kernel()
    );
    for (name, dims) in shapes()? {
        let flop = 2.0 * (dims.0 * dims.1 * dims.2) as f64;
        // About a second of products per line.
        let runs = ((2e11 / flop) as usize).clamp(3, 25);
        for (prec, label) in [
            (MatmulPrecision::Highest, "f32"),
            (MatmulPrecision::Bf16, "bf16"),
        ] {
            let v = rate(prec, dims, runs);
            let key = format!("gemm_{label}_{}x{}x{}_flops", dims.0, dims.1, dims.2);
            r.row(
                "gemm",
                &format!("{label} {name}"),
                format!("{:.0} GFLOP/s", v / 1e9),
                kernels.clone(),
                &key,
                v,
            );
        }
    }
    Ok(())
}
