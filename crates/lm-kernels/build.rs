//! With the `cuda` feature: compiles `cuda/kernels.cu` to PTX with nvcc (the toolkit that
//! candle-kernels builds with: `cargo xtask cuda-build` provides one), for `src/gpu.rs` to load.
//! Without it: nothing.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo::rerun-if-changed=build.rs");
    println!("cargo::rerun-if-changed=cuda/kernels.cu");
    println!("cargo::rerun-if-env-changed=CUDA_COMPUTE_CAP");
    if std::env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    // PTX for the GPU architecture of the build (90 = H100/H200); the driver compiles it for
    // the GPU it meets, any later architecture included. 80 (A100) when none is given.
    let cap = std::env::var("CUDA_COMPUTE_CAP").unwrap_or_else(|_| "80".into());
    let cap: String = cap.chars().filter(char::is_ascii_digit).collect();
    let nvcc = std::env::var("CUDA_ROOT")
        .map(|r| PathBuf::from(r).join("bin/nvcc"))
        .ok()
        .filter(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from("nvcc"));
    let status = Command::new(&nvcc)
        .args(["--ptx", "-O3", "-std=c++17"])
        .arg(format!("-arch=compute_{cap}"))
        .arg("cuda/kernels.cu")
        .arg("-o")
        .arg(out.join("kernels.ptx"))
        .status();
    match status {
        Ok(s) if s.success() => {}
        Ok(s) => panic!("nvcc failed ({s}) on crates/lm-kernels/cuda/kernels.cu"),
        Err(e) => panic!(
            "the cuda feature needs nvcc ({}): {e}; `cargo xtask cuda-build` installs one",
            nvcc.display()
        ),
    }
}
