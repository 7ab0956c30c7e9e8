//! The CUDA kernels' GELU value and slope, checked without a GPU: `cuda/check_gelu_host.sh`
//! compiles those device functions as host C and compares them with the double-precision
//! definitions and their central differences (within 1e-6 over [-8, 8]).

use std::process::Command;

#[test]
fn the_cuda_gelu_functions_match_their_definitions_as_host_code() {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/cuda/check_gelu_host.sh");
    let out = match Command::new("sh").arg(script).output() {
        Ok(out) => out,
        Err(e) => {
            println!("skipped: the CUDA GELU host check: sh cannot run ({e})");
            return;
        }
    };
    let text = String::from_utf8_lossy(&out.stdout);
    let err = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() && err.contains("cc: not found") {
        println!("skipped: the CUDA GELU host check: no C compiler (cc)");
        return;
    }
    assert!(out.status.success(), "{text}{err}");
    assert!(text.contains("tanh: value within") && text.contains("erf: value within"));
    println!("{text}");
}
