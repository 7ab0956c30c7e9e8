//! The kernels of smaller CPUs, run on this one with `LM_KERNELS_MAX_ISA`: every level this CPU
//! has trains the same model (the same products, summed in another order), names the kernel it
//! ran, and `auto` picks bf16 exactly where AMX, or a `vdpbf16ps` at twice the f32 FMA rate
//! (AMD), runs it.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;
use lm_kernels::cpu_kernels::{Bf16Kernel, F32Kernel};
use lm_kernels::isa::Isa;

/// The GPT of `common::small_gpt`, 12 steps.
fn small_run(dir: &Path) -> std::path::PathBuf {
    small_gpt(dir, "isa.toml", 12, 2, (1000, 1))
}

/// Trains `cfg` under `LM_KERNELS_MAX_ISA=isa` with `precision`; returns the run's standard
/// output and its training losses.
fn run_capped(d: &Path, cfg: &Path, isa: Isa, precision: &str) -> (String, Vec<f32>) {
    let out_dir = format!("run-{isa}-{precision}");
    let set = format!("train.matmul_precision={precision}");
    let out = Command::new(env!("CARGO_BIN_EXE_lm-train"))
        .args(["train", "--config", cfg.to_str().unwrap()])
        .args(["--out", &out_dir, "--set", &set, "--threads", "2"])
        .env(lm_kernels::isa::MAX_ISA_ENV, isa.name())
        .current_dir(d)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{isa}: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let losses = losses(&d.join(&out_dir)).iter().map(|r| r.1).collect();
    (stdout, losses)
}

/// The largest relative difference between two loss curves of the same length.
fn max_rel_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs() / x.abs().max(1e-6))
        .fold(0.0, f32::max)
}

#[test]
fn every_instruction_set_level_trains_the_same_losses_and_auto_takes_the_faster_precision() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let cfg = small_run(d);
    // What this CPU has, uncapped (the test process itself may run under a cap: then that cap is
    // the top level tried).
    let amx = lm_kernels::cpu_kernels::bf16_matmul_kernel() == Bf16Kernel::Amx;
    // An AVX512-BF16 at twice the f32 peak (AMD): bf16 is the faster at that level too.
    let fast_dot = lm_kernels::cpu_kernels::bf16_dot_outpaces_f32();
    let has = |isa: Isa| match isa {
        Isa::Generic => true,
        Isa::Avx512 => lm_kernels::cpu_kernels::f32_matmul_kernel() == F32Kernel::Avx512,
        Isa::Avx512Bf16 => {
            amx || lm_kernels::cpu_kernels::bf16_matmul_kernel() == Bf16Kernel::Avx512Bf16
        }
        Isa::Amx => amx,
    };
    let mut f32_runs: Vec<(Isa, Vec<f32>)> = Vec::new();
    let mut bf16_runs: Vec<(Isa, Vec<f32>)> = Vec::new();
    for isa in Isa::ALL {
        if !has(isa) {
            println!("skipped: kernels at {isa}: this CPU does not have them");
            continue;
        }
        let (said, f32_losses) = run_capped(d, &cfg, isa, "highest");
        assert!(f32_losses.len() >= 12, "{said}");
        f32_runs.push((isa, f32_losses));

        let (said, bf16_losses) = run_capped(d, &cfg, isa, "bf16");
        let kernel = match isa {
            Isa::Amx => "AMX-BF16",
            Isa::Avx512Bf16 => "AVX512-BF16",
            Isa::Generic | Isa::Avx512 => "rounded f32",
        };
        let bf16_faster = isa == Isa::Amx || (isa == Isa::Avx512Bf16 && fast_dot);
        if isa == Isa::Amx {
            assert!(said.contains("matmul precision: bf16\n"), "{said}");
        } else if bf16_faster {
            let line = format!("matmul precision: bf16 (CPU kernels capped at {isa} by");
            assert!(said.contains(&line), "{isa}: {said}");
            assert!(!said.contains("slower"), "{isa}: {said}");
        } else {
            assert!(
                said.contains(&format!("bf16 runs as {kernel} on this CPU (no AMX)")),
                "{isa}: {said}"
            );
            assert!(said.contains(&format!("capped at {isa}")), "{said}");
        }
        bf16_runs.push((isa, bf16_losses));

        let (said, _) = run_capped(d, &cfg, isa, "auto");
        let chose = if bf16_faster {
            format!("auto → bf16 products ({kernel})")
        } else {
            "auto → f32 (no AMX here".to_string()
        };
        assert!(said.contains(&chose), "{isa}: {said}");
    }
    // f32: the same products in another order, 12 steps apart by rounding only.
    let (top, reference) = f32_runs.last().unwrap();
    for (isa, l) in &f32_runs {
        let d = max_rel_diff(l, reference);
        println!("f32 losses, {isa} against {top}: largest relative difference {d:.2e}");
        assert!(d < 1e-4, "{isa}: {l:?} vs {reference:?}");
    }
    // bf16: the same rounded inputs; a rounding that flips where a parameter moved by an f32
    // ulp changes a product by up to 2^-8 of itself, so the bound is looser (measured on an AMX
    // Xeon, 2026-11-29: at most 7.8e-6 between levels, 1.5e-5 between bf16 and f32).
    let (top, reference) = bf16_runs.last().unwrap();
    for (isa, l) in &bf16_runs {
        let d = max_rel_diff(l, reference);
        println!("bf16 losses, {isa} against {top}: largest relative difference {d:.2e}");
        assert!(d < 2e-4, "{isa}: {l:?} vs {reference:?}");
    }
    // And bf16 trains the model f32 does.
    let d = max_rel_diff(&bf16_runs.last().unwrap().1, &f32_runs.last().unwrap().1);
    println!("bf16 against f32 at {top}: largest relative difference {d:.2e}");
    assert!(d < 1e-3);
}
