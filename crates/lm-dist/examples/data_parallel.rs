//! lm-dist's collectives in a data-parallel step, with ranks as threads (no MPI needed): four
//! ranks each take a quarter of a least-squares batch, compute their gradient with candle,
//! all-reduce it and divide by the world size — and every rank ends with the gradient one
//! process computes on the whole batch. Under MPI the same code takes
//! `lm_dist::from_environment()` instead (`--features mpi`, run with `mpirun -np 4`).
//!
//! `cargo run --release -p lm-dist --example data_parallel`

use candle_core::{Device, Tensor, Var};
use lm_dist::{Collective, ThreadRank};

/// ∂/∂w of the mean squared error of `x·w` against `y`, on rows `rows` of the batch.
fn gradient(w: &[f32], rows: std::ops::Range<usize>) -> candle_core::Result<Vec<f32>> {
    let dev = Device::Cpu;
    let n = rows.len();
    let x: Vec<f32> = rows.clone().flat_map(|i| [1.0, i as f32 / 16.0]).collect();
    let y: Vec<f32> = rows.map(|i| 3.0 - 2.0 * i as f32 / 16.0).collect();
    let (x, y) = (
        Tensor::from_vec(x, (n, 2), &dev)?,
        Tensor::from_vec(y, (n, 1), &dev)?,
    );
    let w = Var::from_tensor(&Tensor::from_slice(w, (2, 1), &dev)?)?;
    let loss = (x.matmul(w.as_tensor())? - y)?.sqr()?.mean_all()?;
    loss.backward()?
        .get(w.as_tensor())
        .map_or(Ok(vec![0.0; 2]), |g| g.flatten_all()?.to_vec1())
}

fn main() -> anyhow::Result<()> {
    let (batch, world, w) = (16usize, 4usize, [0.5f32, 0.25]);
    let whole = gradient(&w, 0..batch)?;
    let per_rank = ThreadRank::run(world, |rank| -> anyhow::Result<Vec<f32>> {
        let share = batch / rank.world_size();
        let start = rank.rank() * share;
        let mut g = gradient(&w, start..start + share)?;
        // Each rank's mean over its rows; the sum over ranks / world = the mean over the batch.
        rank.all_reduce_sum(&mut g)?;
        Ok(g.iter().map(|v| v / world as f32).collect())
    });
    for (r, g) in per_rank.into_iter().enumerate() {
        let g = g?;
        println!("rank {r}: gradient {g:?}");
        let close = g
            .iter()
            .zip(&whole)
            .all(|(a, b)| (a - b).abs() <= 1e-5 * b.abs().max(1.0));
        anyhow::ensure!(close, "rank {r}: {g:?} vs one process {whole:?}");
    }
    println!("one process on the whole batch: {whole:?}");
    Ok(())
}
