//! The CUDA build on any machine, with or without a GPU (`cargo xtask cuda-build`), and the
//! prepared GPU check (`cargo xtask gpu-check`).
//!
//! A system CUDA toolkit (`nvcc` on the PATH, or `$CUDA_ROOT/bin/nvcc`) is used when there is
//! one. Otherwise the toolkit is installed from PyPI into `target/cuda-toolchain/<version>/`, once:
//! nvcc, nvvm, the C runtime headers and cudart — pinned together, because a newer nvvm emits PTX
//! that the pinned ptxas rejects, and cudarc (candle-core's CUDA binding) knows toolkits up to
//! 13.4 only. Nothing links the driver or the CUDA libraries at build time: candle-core is built
//! with cudarc's `dynamic-loading` (vendor/README.md), so the binaries start on a machine without
//! a GPU and `lm_kernels::device::cuda` says what is missing. The one library candle-kernels asks
//! the linker for, `-lcudart`, is resolved by a linker script to the wheel's `libcudart_static.a`.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::{cargo_with, found};

/// The PyPI toolkit: one CUDA release, every package at its build of that release.
const PINNED_VERSION: &str = "13.0";
const PINNED_BUILD_PACKAGES: [&str; 5] = [
    "nvidia-cuda-nvcc==13.0.88",
    "nvidia-nvvm==13.0.88",
    "nvidia-cuda-crt==13.0.88",
    "nvidia-cuda-runtime==13.0.88",
    "nvidia-cuda-cccl==13.0.85",
];
/// What a GPU run loads besides the driver (the wheels ship `libX.so.13`, which cudarc's
/// dynamic loading looks for by that name).
const PINNED_RUNTIME_PACKAGES: [&str; 3] = [
    "nvidia-cublas==13.0.2.14",
    "nvidia-curand==10.4.0.35",
    "nvidia-cuda-nvrtc==13.0.88",
];
/// The GPU architecture the PTX is built for when none is given and no GPU is here to ask:
/// sm_90 (H100/H200). PTX for it is JIT-compiled by the driver on later GPUs.
const DEFAULT_COMPUTE_CAP: &str = "90";

/// The crates built and tested with `--features cuda`: every crate with the feature.
pub const CUDA_PACKAGES: [&str; 7] = [
    "lm-kernels",
    "lm-optim",
    "lm-objectives",
    "lm-models",
    "lm-train",
    "lm-integration-tests",
    "lm-bench",
];

/// Where the CUDA build keeps its artifacts apart from the CPU build's (switching features in
/// one target folder would rebuild candle on every switch).
pub const CUDA_TARGET_DIR: &str = "target/cuda";

/// A CUDA toolkit and the environment a cargo build needs to use it.
pub struct Toolchain {
    /// The toolkit root (`bin/nvcc`, `include/`).
    pub root: PathBuf,
    /// Where it came from, for the log line.
    pub origin: String,
    /// Folder with the `libcudart.so` linker script, for a PyPI toolkit.
    link_dir: Option<PathBuf>,
    /// Folders of the wheels' shared libraries (runtime libraries, when installed).
    lib_dirs: Vec<PathBuf>,
}

impl Toolchain {
    /// A system toolkit if there is one, else the pinned PyPI one (installed on first use, with
    /// the runtime libraries when `runtime` is set). `Ok(None)` when neither is possible.
    pub fn find_or_install(runtime: bool) -> Result<Option<Toolchain>> {
        if let Some(root) = system_toolkit() {
            return Ok(Some(Toolchain {
                origin: format!("system CUDA at {}", root.display()),
                root,
                link_dir: None,
                lib_dirs: Vec::new(),
            }));
        }
        if !found("python3") {
            return Ok(None);
        }
        install_pinned(runtime).map(Some)
    }

    /// Environment variables for cargo and the binaries it builds and runs.
    pub fn env(&self) -> Vec<(String, String)> {
        let root = self.root.display().to_string();
        let path = std::env::var("PATH").unwrap_or_default();
        let mut env = vec![
            ("CUDA_ROOT".to_string(), root.clone()),
            ("CUDA_PATH".to_string(), root.clone()),
            ("PATH".to_string(), format!("{root}/bin:{path}")),
        ];
        if std::env::var_os("CUDA_COMPUTE_CAP").is_none() {
            let cap = gpu_compute_cap().unwrap_or_else(|| DEFAULT_COMPUTE_CAP.to_string());
            env.push(("CUDA_COMPUTE_CAP".to_string(), cap));
        }
        if let Some(link) = &self.link_dir {
            let old = std::env::var("LIBRARY_PATH").unwrap_or_default();
            env.push((
                "LIBRARY_PATH".to_string(),
                format!("{}:{old}", link.display()),
            ));
        }
        if !self.lib_dirs.is_empty() {
            let mut dirs: Vec<String> = self
                .lib_dirs
                .iter()
                .map(|d| d.display().to_string())
                .collect();
            if let Ok(old) = std::env::var("LD_LIBRARY_PATH") {
                dirs.push(old);
            }
            env.push(("LD_LIBRARY_PATH".to_string(), dirs.join(":")));
        }
        env
    }
}

/// `$CUDA_ROOT`/`$CUDA_PATH` with `bin/nvcc`, or the toolkit of an `nvcc` on the PATH.
fn system_toolkit() -> Option<PathBuf> {
    for var in ["CUDA_ROOT", "CUDA_PATH", "CUDA_HOME"] {
        if let Some(root) = std::env::var_os(var).map(PathBuf::from) {
            if root.join("bin/nvcc").is_file() {
                return Some(root);
            }
        }
    }
    let paths = std::env::var_os("PATH")?;
    std::env::split_paths(&paths)
        .map(|dir| dir.join("nvcc"))
        .find(|nvcc| nvcc.is_file())
        .and_then(|nvcc| nvcc.canonicalize().ok())
        .and_then(|nvcc| Some(nvcc.parent()?.parent()?.to_path_buf()))
}

/// The compute capability of GPU 0 as nvidia-smi reports it ("9.0" → "90"), if there is one.
fn gpu_compute_cap() -> Option<String> {
    let out = Command::new("nvidia-smi")
        .args(["--query-gpu=compute_cap", "--format=csv,noheader"])
        .output()
        .ok()?;
    let text = String::from_utf8(out.stdout).ok()?;
    let cap = text.lines().next()?.trim().replace('.', "");
    (out.status.success() && !cap.is_empty() && cap.chars().all(|c| c.is_ascii_digit()))
        .then_some(cap)
}

/// The pinned toolkit in `target/cuda-toolchain/<version>/venv`, installed if absent.
fn install_pinned(runtime: bool) -> Result<Toolchain> {
    let home = Path::new("target/cuda-toolchain")
        .join(PINNED_VERSION)
        .canonicalize()
        .or_else(|_| {
            std::fs::create_dir_all(Path::new("target/cuda-toolchain").join(PINNED_VERSION))?;
            Path::new("target/cuda-toolchain")
                .join(PINNED_VERSION)
                .canonicalize()
        })
        .context("creating target/cuda-toolchain")?;
    let venv = home.join("venv");
    let python = venv.join("bin/python");
    if !python.is_file() {
        run(Command::new("python3").args(["-m", "venv"]).arg(&venv))?;
    }
    let mut wanted: Vec<&str> = PINNED_BUILD_PACKAGES.to_vec();
    if runtime {
        wanted.extend(PINNED_RUNTIME_PACKAGES);
    }
    let stamp = home.join(format!("installed-{}", wanted.len()));
    if !stamp.is_file() {
        println!(
            "cuda: installing the pinned CUDA {PINNED_VERSION} toolkit from PyPI into {}",
            venv.display()
        );
        run(Command::new(&python)
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--no-cache-dir",
                "--disable-pip-version-check",
            ])
            .args(&wanted))?;
        std::fs::write(&stamp, wanted.join("\n"))?;
    }
    let site = Command::new(&python)
        .args([
            "-c",
            "import sysconfig; print(sysconfig.get_paths()['purelib'])",
        ])
        .output()
        .context("asking the toolkit's python for its site-packages")?;
    let nvidia = PathBuf::from(String::from_utf8_lossy(&site.stdout).trim()).join("nvidia");
    let root = nvidia.join("cu13");
    if !root.join("bin/nvcc").is_file() {
        bail!(
            "the PyPI toolkit has no {}",
            root.join("bin/nvcc").display()
        );
    }
    // candle-kernels asks for `-lcudart`: a linker script by that name pulls in the static
    // runtime, so no libcudart.so is needed at run time.
    let link_dir = home.join("link");
    std::fs::create_dir_all(&link_dir)?;
    let cudart_static = root.join("lib/libcudart_static.a");
    if !cudart_static.is_file() {
        bail!("the PyPI toolkit has no {}", cudart_static.display());
    }
    std::fs::write(
        link_dir.join("libcudart.so"),
        format!("INPUT({})\n", cudart_static.display()),
    )?;
    let lib_dirs = if runtime {
        vec![root.join("lib")]
    } else {
        Vec::new()
    };
    Ok(Toolchain {
        origin: format!("CUDA {PINNED_VERSION} from PyPI at {}", root.display()),
        root,
        link_dir: Some(link_dir),
        lib_dirs,
    })
}

/// Free space, in GB, on the file system holding `dir` (from `df -Pk`); `None` where `df` cannot
/// tell.
fn free_disk_gb(dir: &Path) -> Option<f64> {
    let probe = if dir.exists() { dir } else { Path::new(".") };
    let out = Command::new("df").arg("-Pk").arg(probe).output().ok()?;
    let text = String::from_utf8(out.stdout).ok()?;
    // POSIX format: a header line, then `fs blocks used available capacity mount`.
    let kib: f64 = text
        .lines()
        .nth(1)?
        .split_whitespace()
        .nth(3)?
        .parse()
        .ok()?;
    Some(kib / 1e6 * 1.024)
}

fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed ({status})");
    }
    Ok(())
}

/// Free disk the CUDA build needs in `target/` (measured in a clean clone, 2026-11-29: the
/// toolkit from PyPI 0.3 GB, `target/cuda` 1.4 GB with the settings below; measured here,
/// 2026-11-30: the test binaries, linked before they are deleted, another 1.4 GB; the rest is
/// margin).
const CUDA_BUILD_DISK_GB: f64 = 5.0;

/// `cargo xtask cuda-build`: every CUDA crate, its unit and integration tests (lm-bench's as its
/// binary's unit tests) and the `lm-train` binary built and linked with `--features cuda` (and
/// `lm-train` with `--features nccl` where MPI is installed), then the CUDA-only tests run — on a
/// machine without a GPU they print what they skipped and why.
///
/// The test binaries are deleted once linked (except the CUDA-only tests, which run next): the
/// link is the check, and kept they would add 1.4 GB to a build that filled a CI machine's disk
/// once.
pub fn build() -> Result<()> {
    if let Some(free) = free_disk_gb(Path::new("target")) {
        if free < CUDA_BUILD_DISK_GB {
            println!(
                "skipped: the CUDA build (cargo xtask cuda-build): {free:.1} GB free on the disk \
                 of target/, it needs about {CUDA_BUILD_DISK_GB} GB"
            );
            return Ok(());
        }
    }
    let Some(tc) = Toolchain::find_or_install(false)? else {
        println!(
            "skipped: the CUDA build (cargo xtask cuda-build): no CUDA toolkit (nvcc) and no \
             python3 to install one from PyPI"
        );
        return Ok(());
    };
    println!("cuda: building with {}", tc.origin);
    let mut env = tc.env();
    // A link check, not a debugging build: no debug info and no incremental cache, which were
    // most of its disk (9.8 GB with both and every test binary linked, 1.4 GB without).
    env.push(("CARGO_INCREMENTAL".to_string(), "0".to_string()));
    env.push(("CARGO_PROFILE_DEV_DEBUG".to_string(), "0".to_string()));
    // One cargo call for all of them: the features of shared dependencies (candle-core) unify
    // over the packages built together, so a call per package would rebuild candle per package.
    let linked = link_tests(&env)?;
    let mut bytes = 0u64;
    let mut removed = 0usize;
    for exe in linked.iter().filter(|e| !is_cuda_only_test(e)) {
        bytes += std::fs::metadata(exe).map(|m| m.len()).unwrap_or(0);
        std::fs::remove_file(exe).with_context(|| format!("removing {}", exe.display()))?;
        removed += 1;
    }
    println!(
        "cuda: {} test binaries linked; {removed} removed after the link ({:.1} GB)",
        linked.len(),
        bytes as f64 / 1e9
    );
    // The CUDA-only tests, run from the binary just linked (a cargo call for one package would
    // unify features differently and rebuild): with a GPU here they run, else say why they skip.
    let Some(cuda_tests) = linked.iter().find(|e| is_cuda_only_test(e)) else {
        bail!("cargo linked no CUDA-only test binary (tests/cuda.rs)");
    };
    run(Command::new(cuda_tests)
        .args(["--nocapture", "--test-threads", "1"])
        .envs(env.iter().map(|(k, v)| (k, v))))?;
    if found("mpicc") || found("mpirun") {
        cargo_with(
            &[
                "build",
                "--target-dir",
                CUDA_TARGET_DIR,
                "-p",
                "lm-train",
                "--features",
                "nccl",
            ],
            &env,
        )
    } else {
        println!(
            "skipped: the NCCL build (lm-train --features nccl): MPI not found; install with \
             `apt-get install libopenmpi-dev openmpi-bin libclang-dev`"
        );
        Ok(())
    }
}

/// Builds and links every test target of the CUDA packages with `--features cuda` (unit tests of
/// the libraries and binaries, integration tests, and the `lm-train` binary they run) and returns
/// the test executables cargo reports.
fn link_tests(env: &[(String, String)]) -> Result<Vec<PathBuf>> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut args = vec![
        "test",
        "--no-run",
        "--target-dir",
        CUDA_TARGET_DIR,
        "--tests",
    ];
    for p in CUDA_PACKAGES {
        args.extend(["-p", p]);
    }
    args.extend([
        "--features",
        "cuda",
        "--message-format",
        "json-render-diagnostics",
    ]);
    let out = Command::new(&cargo)
        .args(&args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stderr(std::process::Stdio::inherit())
        .output()
        .with_context(|| format!("running {cargo} {}", args.join(" ")))?;
    if !out.status.success() {
        bail!("`cargo {}` failed ({})", args.join(" "), out.status);
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains("\"reason\":\"compiler-artifact\""))
        .filter_map(executable_of)
        .filter(|exe| exe.parent().is_some_and(|d| d.ends_with("deps")))
        .collect())
}

/// The `"executable"` path of one of cargo's JSON messages, when it names one.
fn executable_of(line: &str) -> Option<PathBuf> {
    const KEY: &str = "\"executable\":\"";
    let start = line.find(KEY)? + KEY.len();
    let end = start + line[start..].find('"')?;
    Some(PathBuf::from(&line[start..end]))
}

/// The CUDA-only integration tests (`tests/cuda.rs`), which run after the link.
fn is_cuda_only_test(exe: &Path) -> bool {
    exe.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with("cuda-"))
}

/// `cargo clippy -D warnings` over the code behind the `cuda` and `nccl` features (part of
/// `cargo xtask ci`; skipped with a line where no toolkit can be had).
pub fn clippy() -> Result<()> {
    let Some(tc) = Toolchain::find_or_install(false)? else {
        println!("skipped: clippy of the CUDA code: no CUDA toolkit (nvcc) and no python3");
        return Ok(());
    };
    let mut args = vec!["clippy", "--target-dir", CUDA_TARGET_DIR, "--all-targets"];
    for p in CUDA_PACKAGES {
        args.extend(["-p", p]);
    }
    let mut features: Vec<String> = CUDA_PACKAGES.iter().map(|p| format!("{p}/cuda")).collect();
    if found("mpicc") || found("mpirun") {
        features.push("lm-train/nccl".into());
    }
    let features = features.join(",");
    args.extend(["--features", &features, "--", "-D", "warnings"]);
    cargo_with(&args, &tc.env())
}

/// Folders of the CUDA libraries that pip wheels put under a python's site-packages
/// (`nvidia/cu13/lib`, `nvidia/cublas/lib`, …): where PyTorch's GPU machines keep cuBLAS,
/// cuRAND, NVRTC and NCCL.
fn python_cuda_lib_dirs() -> Vec<PathBuf> {
    let Ok(out) = Command::new("python3")
        .args([
            "-c",
            "import sysconfig; print(sysconfig.get_paths()['purelib'])",
        ])
        .output()
    else {
        return Vec::new();
    };
    let nvidia = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()).join("nvidia");
    let Ok(entries) = std::fs::read_dir(&nvidia) else {
        return Vec::new();
    };
    let mut dirs: Vec<PathBuf> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.path().join("lib"))
        .filter(|d| d.is_dir())
        .collect();
    dirs.sort();
    dirs
}

/// The folder `cargo xtask gpu-check --bundle` fills, and the device machine runs.
const BUNDLE: &str = "target/gpu-check";

/// The shell script of the bundle: the CUDA tests, lm-bench's GPU step, and the PyTorch anchor,
/// with the CUDA libraries of the machine's python on the loader's path. `$OUT` (if set) gets
/// the log and the figures.
const RUN_SH: &str = r#"#!/usr/bin/env bash
# Made by `cargo xtask gpu-check --bundle`: run on a machine with an NVIDIA GPU.
set -uo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="${OUT:-$here/out}"; mkdir -p "$out"
# The binaries travel gzip-compressed (their embedded PTX is most of their size).
mkdir -p "$here/bin"
for b in cuda-tests lm-bench; do gunzip -c "$here/$b.gz" > "$here/bin/$b" && chmod +x "$here/bin/$b"; done
site="$(python3 -c "import sysconfig; print(sysconfig.get_paths()['purelib'])" 2>/dev/null)"
for d in "$site"/nvidia/*/lib; do [ -d "$d" ] && LD_LIBRARY_PATH="$d:${LD_LIBRARY_PATH:-}"; done
export LD_LIBRARY_PATH
nvidia-smi --query-gpu=name,driver_version,compute_cap,memory.total --format=csv | tee "$out/gpu.txt"
rc=0
echo "== CUDA tests"; "$here/bin/cuda-tests" --nocapture --test-threads 1 2>&1 | tee "$out/tests.log" || rc=1
echo "== lm-train GPT-2 small step"
LM_BENCH_JSON="$out/lm-train.json" "$here/bin/lm-bench" gpu "${BATCH:-8}" "${STEPS:-10}" 2>&1 | tee "$out/bench.log" || rc=1
echo "== PyTorch eager, same step"
python3 "$here/gpt2_gpu_step.py" --batch "${BATCH:-8}" --steps "${STEPS:-10}" --json "$out/pytorch.json" 2>&1 | tee -a "$out/bench.log" || rc=1
exit $rc
"#;

/// `cargo xtask gpu-check`: on a machine with a GPU and cargo, builds with CUDA, runs the
/// CUDA-only tests, then times GPT-2 small (124 M, context 1024, bf16 products) in lm-train and
/// in PyTorch eager (if python3 has torch). With `--bundle`, builds here instead (no GPU
/// needed) and leaves in `target/gpu-check/` the compressed binaries and `run.sh`, to carry to a
/// GPU machine without a Rust toolchain (the device tool: `carry: ["target/gpu-check"]`,
/// command `target/gpu-check/run.sh`, results under `$OUT`).
pub fn gpu_check(bundle: bool) -> Result<()> {
    let Some(tc) = Toolchain::find_or_install(!bundle)? else {
        bail!("gpu-check: no CUDA toolkit (nvcc) and no python3 to install one from PyPI");
    };
    println!("gpu-check: building with {}", tc.origin);
    let mut env = tc.env();
    if !bundle {
        let mut dirs: Vec<String> = python_cuda_lib_dirs()
            .iter()
            .map(|d| d.display().to_string())
            .collect();
        dirs.extend(std::env::var("LD_LIBRARY_PATH").ok());
        env.push(("LD_LIBRARY_PATH".into(), dirs.join(":")));
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let built = Command::new(&cargo)
        .args(["test", "--release", "--no-run", "--message-format=json"])
        .args([
            "--target-dir",
            CUDA_TARGET_DIR,
            "-p",
            "lm-integration-tests",
        ])
        .args(["--features", "cuda", "--test", "cuda"])
        .envs(env.iter().map(|(k, v)| (k, v)))
        .output()
        .context("building the CUDA tests")?;
    if !built.status.success() {
        bail!(
            "building the CUDA tests failed:\n{}",
            String::from_utf8_lossy(&built.stderr)
        );
    }
    // The test executable, from cargo's JSON messages ("executable":"<path>").
    let text = String::from_utf8_lossy(&built.stdout);
    let tests = text
        .lines()
        .filter(|l| l.contains("\"name\":\"cuda\""))
        .find_map(|l| {
            let rest = &l[l.find("\"executable\":\"")? + 14..];
            Some(PathBuf::from(&rest[..rest.find('"')?]))
        })
        .context("cargo did not name the CUDA test executable")?;
    cargo_with(
        &[
            "build",
            "--release",
            "--target-dir",
            CUDA_TARGET_DIR,
            "-p",
            "lm-bench",
            "--features",
            "cuda",
        ],
        &env,
    )?;
    let bench = Path::new(CUDA_TARGET_DIR).join("release/lm-bench");
    let dir = Path::new(BUNDLE);
    // A fresh folder: binaries that run.sh unpacked into bin/ on an earlier run would carry
    // another 2 × ~63 MB past the device tool's 64 MiB.
    if dir.exists() {
        std::fs::remove_dir_all(dir).with_context(|| format!("clearing {BUNDLE}"))?;
    }
    std::fs::create_dir_all(dir)?;
    for (from, to) in [
        (tests.as_path(), "cuda-tests"),
        (bench.as_path(), "lm-bench"),
    ] {
        // Stripped (debug line tables) and gzip-compressed (the embedded PTX): 2 × ~63 MB
        // become 2 × ~16 MB, so that the bundle and the working tree fit the device tool's
        // 64 MiB.
        std::fs::copy(from, dir.join(to))
            .with_context(|| format!("copying {} into {BUNDLE}", from.display()))?;
        if found("strip") {
            run(Command::new("strip").arg(dir.join(to)))?;
        }
        run(Command::new("gzip").args(["-9", "-f"]).arg(dir.join(to)))?;
    }
    std::fs::copy(
        "bench/pytorch/gpt2_gpu_step.py",
        dir.join("gpt2_gpu_step.py"),
    )?;
    let script = dir.join("run.sh");
    std::fs::write(&script, RUN_SH)?;
    run(Command::new("chmod").arg("+x").arg(&script))?;
    if bundle {
        println!("gpu-check: bundle ready in {BUNDLE}/ (run {BUNDLE}/run.sh on the GPU machine)");
        return Ok(());
    }
    run(Command::new(&script).envs(env.iter().map(|(k, v)| (k, v))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_executable_of_a_cargo_message() {
        let test = r#"{"reason":"compiler-artifact","target":{"name":"cli"},"executable":"/w/target/cuda/debug/deps/cli-0a1b","fresh":true}"#;
        let lib = r#"{"reason":"compiler-artifact","target":{"name":"lm_kernels"},"executable":null,"fresh":true}"#;
        assert_eq!(
            executable_of(test),
            Some(PathBuf::from("/w/target/cuda/debug/deps/cli-0a1b"))
        );
        assert_eq!(executable_of(lib), None);
        assert!(is_cuda_only_test(Path::new("/t/deps/cuda-99ff")));
        assert!(!is_cuda_only_test(Path::new("/t/deps/cli-99ff")));
    }
}
