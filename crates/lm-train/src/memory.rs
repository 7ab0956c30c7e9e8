//! What a run holds in memory: the account printed when it starts (per rank: parameters,
//! gradients, optimizer state, an activation estimate) and the process's peak resident set.

use std::fmt;

/// Bytes one rank holds for training, by kind.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MemoryAccount {
    /// Every parameter and buffer of the model.
    pub parameters: u64,
    /// The gradients of the trained parameters (one per trained parameter, its dtype).
    pub gradients: u64,
    /// The optimizer's state on this rank (its shard under ZeRO-1).
    pub optimizer_state: u64,
    /// Activations kept for backward by one micro-batch of this rank's rows, estimated
    /// (Korthikanti et al. 2022's count); `None` where no estimate is made (fine-tuning).
    pub activations: Option<f64>,
}

impl MemoryAccount {
    /// Parameters, gradients and optimizer state: what stays allocated between steps.
    pub fn state_bytes(&self) -> u64 {
        self.parameters + self.gradients + self.optimizer_state
    }
}

/// `n` bytes in MiB.
pub fn mib(n: f64) -> f64 {
    n / f64::from(1u32 << 20)
}

impl fmt::Display for MemoryAccount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "memory per rank: parameters {:.1} MiB, gradients {:.1} MiB, optimizer state {:.1} MiB",
            mib(self.parameters as f64),
            mib(self.gradients as f64),
            mib(self.optimizer_state as f64)
        )?;
        match self.activations {
            Some(a) => write!(
                f,
                ", activations ≈ {:.1} MiB per micro-batch (estimate)",
                mib(a)
            ),
            None => write!(f, ", activations not estimated"),
        }
    }
}

/// The process's peak resident set in bytes so far (`VmHWM` of `/proc/self/status`); `None`
/// where the system does not say (not Linux).
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line
        .trim_start_matches("VmHWM:")
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_peak_grows_with_a_touched_allocation() {
        let Some(before) = peak_rss_bytes() else {
            println!("skipped: no /proc/self/status on this system");
            return;
        };
        // 64 MiB written page by page: resident, so the high-water mark is at least that above
        // nothing (and never below what it was).
        let v = vec![1u8; 64 << 20];
        let after = peak_rss_bytes().unwrap();
        assert!(after >= before && after >= 64 << 20, "{before} → {after}");
        assert_eq!(v.iter().map(|&b| b as usize).sum::<usize>(), 64 << 20);
    }

    #[test]
    fn the_account_says_each_part() {
        let a = MemoryAccount {
            parameters: 3 << 20,
            gradients: 2 << 20,
            optimizer_state: 6 << 20,
            activations: Some(1.5 * f64::from(1u32 << 20)),
        };
        assert_eq!(a.state_bytes(), 11 << 20);
        assert_eq!(
            a.to_string(),
            "memory per rank: parameters 3.0 MiB, gradients 2.0 MiB, optimizer state 6.0 MiB, \
             activations ≈ 1.5 MiB per micro-batch (estimate)"
        );
    }
}
