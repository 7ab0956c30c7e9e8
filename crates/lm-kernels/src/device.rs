//! Opening a GPU without panicking.
//!
//! candle's CUDA backend (through cudarc, built with `dynamic-loading`: see `vendor/README.md`)
//! loads the driver (`libcuda`) and the CUDA libraries (`libnvrtc`, `libcublas`, `libcublasLt`,
//! `libcurand`) when the first device is created, and **panics** when one is missing. A binary
//! built with `--features cuda` must still run on a machine without a GPU or without the CUDA
//! libraries, so [`cuda`] looks for each library first — with the very names cudarc will try —
//! and returns a [`DeviceError`] naming the missing one instead.

use candle_core::Device;

/// Why a GPU device could not be opened.
#[derive(Debug)]
pub enum DeviceError {
    /// The binary was built without the cargo feature for this backend.
    NotBuilt {
        /// `cuda` or `metal`.
        feature: &'static str,
    },
    /// A shared library the backend loads at run time is not on the loader's path.
    MissingLibrary {
        /// cudarc's name for it (`cuda` is the driver, `libcuda.so.1`).
        library: &'static str,
        /// The file names looked for, in order.
        searched: Vec<String>,
    },
    /// The libraries are present but the backend refused (no device, driver too old, …).
    Backend(String),
}

impl std::fmt::Display for DeviceError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DeviceError::NotBuilt { feature } => write!(
                f,
                "this binary was built without the `{feature}` feature (rebuild with --features {feature})"
            ),
            DeviceError::MissingLibrary { library, searched } => {
                let hint = if *library == "cuda" {
                    "the NVIDIA driver is not installed (or this machine has no GPU)".to_string()
                } else {
                    format!(
                        "install the CUDA {library} library (system CUDA toolkit, or the pip wheel \
                         that `cargo xtask gpu-check` installs) and put its folder on LD_LIBRARY_PATH"
                    )
                };
                let first = searched.first().map_or("", String::as_str);
                write!(
                    f,
                    "CUDA library `{library}` not found (no {first} or any of the {} other names \
                     cudarc tries on the loader's path): {hint}",
                    searched.len().saturating_sub(1)
                )
            }
            DeviceError::Backend(msg) => write!(f, "{msg}"),
        }
    }
}

impl std::error::Error for DeviceError {}

/// The libraries candle's CUDA backend loads when a device is created, by cudarc's names.
pub const CUDA_LIBRARIES: [&str; 5] = ["cuda", "nvrtc", "cublas", "cublasLt", "curand"];

/// The first of [`CUDA_LIBRARIES`] that cannot be loaded, with the file names tried; `None`
/// when all load. Always `Some` for the driver in a build without the `cuda` feature.
pub fn missing_cuda_library() -> Option<DeviceError> {
    #[cfg(all(feature = "cuda", target_os = "linux"))]
    for library in CUDA_LIBRARIES {
        let searched = cudarc::get_lib_name_candidates(library);
        if !searched.iter().any(|name| loadable(name)) {
            return Some(DeviceError::MissingLibrary { library, searched });
        }
    }
    #[cfg(not(feature = "cuda"))]
    return Some(DeviceError::NotBuilt { feature: "cuda" });
    #[allow(unreachable_code)]
    None
}

/// Whether the dynamic loader finds `name` (and its dependencies).
#[cfg(all(feature = "cuda", target_os = "linux"))]
fn loadable(name: &str) -> bool {
    let Ok(c) = std::ffi::CString::new(name) else {
        return false;
    };
    // SAFETY: `c` is a NUL-terminated string that outlives the call; a non-null handle is
    // closed once (the library stays loaded only if something else holds it).
    unsafe {
        let handle = libc::dlopen(c.as_ptr(), libc::RTLD_LAZY | libc::RTLD_LOCAL);
        if handle.is_null() {
            return false;
        }
        libc::dlclose(handle);
    }
    true
}

/// CUDA device `ordinal`, or the reason there is none — never a panic.
pub fn cuda(ordinal: usize) -> Result<Device, DeviceError> {
    if let Some(missing) = missing_cuda_library() {
        return Err(missing);
    }
    // The libraries load; what cudarc may still panic on (a driver older than the toolkit the
    // binary was built with lacks a symbol) is turned into an error as well.
    match std::panic::catch_unwind(|| Device::new_cuda(ordinal)) {
        Ok(Ok(device)) => Ok(device),
        Ok(Err(e)) => Err(DeviceError::Backend(format!("CUDA device {ordinal}: {e}"))),
        Err(panic) => {
            let msg = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "the CUDA backend panicked".into());
            Err(DeviceError::Backend(format!(
                "CUDA device {ordinal}: {msg}"
            )))
        }
    }
}

/// Metal device `ordinal`, or the reason there is none.
pub fn metal(ordinal: usize) -> Result<Device, DeviceError> {
    if !candle_core::utils::metal_is_available() {
        return Err(DeviceError::NotBuilt { feature: "metal" });
    }
    Device::new_metal(ordinal)
        .map_err(|e| DeviceError::Backend(format!("Metal device {ordinal}: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_a_gpu_the_error_names_what_is_missing() {
        match cuda(0) {
            // A machine with a GPU and the libraries: nothing to check here.
            Ok(device) => assert!(device.is_cuda()),
            Err(DeviceError::NotBuilt { feature }) => {
                assert_eq!((feature, cfg!(feature = "cuda")), ("cuda", false));
            }
            Err(DeviceError::MissingLibrary { library, searched }) => {
                assert!(CUDA_LIBRARIES.contains(&library));
                assert!(searched.iter().any(|s| s.contains(library)), "{searched:?}");
            }
            Err(DeviceError::Backend(msg)) => assert!(msg.starts_with("CUDA device 0"), "{msg}"),
        }
    }
}
