//! Reading tensors back to the host, counted. On a GPU every such read waits for the device to
//! finish its queue (a synchronisation); the training step routes each of its reads through
//! here, so a test can hold the step to a number of them — on the CPU too, where the count is
//! the same (it counts calls, whatever the device).

use std::sync::atomic::{AtomicU64, Ordering};

use candle_core::{Result, Tensor, WithDType};

static READS: AtomicU64 = AtomicU64::new(0);

/// Reads made through this module since the process started (all threads).
pub fn reads() -> u64 {
    READS.load(Ordering::Relaxed)
}

/// The elements of `t` (any shape, flattened) on the host: one counted read.
pub fn read_vec<T: WithDType>(t: &Tensor) -> Result<Vec<T>> {
    READS.fetch_add(1, Ordering::Relaxed);
    t.flatten_all()?.to_vec1()
}

/// The one element of `t` on the host: one counted read.
pub fn read_scalar<T: WithDType>(t: &Tensor) -> Result<T> {
    READS.fetch_add(1, Ordering::Relaxed);
    t.to_scalar()
}

/// The value of a one-element f32 tensor that lives in CPU memory, read where it lies: not a
/// transfer from a device, so not counted. `None` for a tensor on a device (read those with
/// [`read_scalar`]) or of another type or size.
pub fn cpu_scalar(t: &Tensor) -> Option<f32> {
    if !t.device().is_cpu() || t.dtype() != candle_core::DType::F32 || t.elem_count() != 1 {
        return None;
    }
    t.flatten_all()
        .ok()?
        .to_vec1::<f32>()
        .ok()?
        .first()
        .copied()
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn each_read_is_counted_once() {
        let t = Tensor::new(&[[1f32, 2.0], [3.0, 4.0]], &Device::Cpu).unwrap();
        let before = reads();
        assert_eq!(read_vec::<f32>(&t).unwrap(), vec![1.0, 2.0, 3.0, 4.0]);
        let s = t.sum_all().unwrap();
        assert_eq!(read_scalar::<f32>(&s).unwrap(), 10.0);
        // Other tests of this binary may read at the same time: at least our two.
        assert!(reads() >= before + 2);
    }
}
