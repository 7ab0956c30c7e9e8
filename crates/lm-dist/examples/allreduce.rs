//! Times `Collective::all_reduce_sum` over buffers of several sizes (median of 21 runs after a
//! warm-up): `mpirun -np 2 target/release/examples/allreduce`. Rank 0 prints, per size, the time
//! and the bytes per second of gradient it reduced.

fn main() {
    let comm = lm_dist::from_environment().expect("MPI");
    for floats in [1usize << 16, 1 << 18, 1 << 20, 800_000, 1 << 22, 1 << 24] {
        let mut buf = vec![1.0f32; floats];
        comm.all_reduce_sum(&mut buf).unwrap();
        let mut times: Vec<f64> = (0..21)
            .map(|_| {
                comm.barrier().unwrap();
                let t = std::time::Instant::now();
                comm.all_reduce_sum(&mut buf).unwrap();
                t.elapsed().as_secs_f64()
            })
            .collect();
        times.sort_by(f64::total_cmp);
        if comm.rank() == 0 {
            let med = times[times.len() / 2];
            let mb = floats as f64 * 4.0 / 1e6;
            println!(
                "{} ranks, {floats:>8} f32 ({mb:6.2} MB): {:8.3} ms, {:6.2} GB/s of gradient",
                comm.world_size(),
                med * 1e3,
                mb / 1e3 / med
            );
        }
    }
}
