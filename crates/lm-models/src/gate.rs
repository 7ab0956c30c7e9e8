//! A hook around each recomputed block, for a data-parallel strategy that keeps parameters away
//! between uses (ZeRO-3 gathers a block's parameters just before the block runs, in the forward
//! pass and again in its recomputation during backward, and frees the previous block's). Blocks
//! that keep their activations hold their parameters in the graph until backward, so only
//! recomputed blocks (`train.activation_checkpointing`) go through the gate.
//!
//! The gate is installed per thread for a forward pass and its backward pass
//! ([`with_block_gate`]); the models number their recomputed blocks in forward order, and a
//! block's recomputation carries its forward number.

use candle_core::{Result, Tensor};
use std::cell::{Cell, RefCell};
use std::rc::Rc;

/// What runs around each recomputed block while installed.
pub trait BlockGate {
    /// Runs `block`, the `seq`-th recomputed block of this forward pass (from 0, in forward
    /// order; its recomputation in the backward pass has the same number).
    fn run(&self, seq: usize, block: &mut dyn FnMut() -> Result<Tensor>) -> Result<Tensor>;
}

thread_local! {
    static GATE: RefCell<Option<Rc<dyn BlockGate>>> = const { RefCell::new(None) };
    static NEXT: Cell<usize> = const { Cell::new(0) };
}

/// Runs `f` — a forward pass and its backward pass — with `gate` around every recomputed block
/// on this thread, the blocks numbered from 0; the previous gate (usually none) is back
/// afterwards, also on unwinding.
pub fn with_block_gate<T>(gate: Rc<dyn BlockGate>, f: impl FnOnce() -> T) -> T {
    struct Restore(Option<Rc<dyn BlockGate>>, usize);
    impl Drop for Restore {
        fn drop(&mut self) {
            GATE.with(|g| *g.borrow_mut() = self.0.take());
            NEXT.with(|n| n.set(self.1));
        }
    }
    let previous = GATE.with(|g| g.borrow_mut().replace(gate));
    let _restore = Restore(previous, NEXT.with(|n| n.replace(0)));
    f()
}

/// The number of the next recomputed block of this pass, when a gate is installed.
pub(crate) fn next_block() -> Option<usize> {
    GATE.with(|g| g.borrow().is_some())
        .then(|| NEXT.with(|n| n.replace(n.get() + 1)))
}

/// `block()`, through the installed gate as block `seq` when there are both.
pub(crate) fn run_gated(
    seq: Option<usize>,
    block: &mut dyn FnMut() -> Result<Tensor>,
) -> Result<Tensor> {
    let gate = GATE.with(|g| g.borrow().clone());
    match (seq, gate) {
        (Some(seq), Some(gate)) => gate.run(seq, block),
        _ => block(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// Records the blocks it runs.
    struct Log(RefCell<Vec<usize>>);

    impl BlockGate for Log {
        fn run(&self, seq: usize, block: &mut dyn FnMut() -> Result<Tensor>) -> Result<Tensor> {
            self.0.borrow_mut().push(seq);
            block()
        }
    }

    #[test]
    fn blocks_are_numbered_per_pass_and_run_through_the_gate_only_while_installed() {
        let one = || Tensor::new(1f32, &Device::Cpu);
        assert_eq!(next_block(), None);
        let log = Rc::new(Log(RefCell::new(vec![])));
        with_block_gate(log.clone(), || {
            let (a, b) = (next_block(), next_block());
            assert_eq!((a, b), (Some(0), Some(1)));
            run_gated(b, &mut || one()).unwrap();
            run_gated(a, &mut || one()).unwrap();
            // A nested pass numbers from 0 and restores the outer count.
            with_block_gate(log.clone(), || assert_eq!(next_block(), Some(0)));
            assert_eq!(next_block(), Some(2));
        });
        run_gated(Some(5), &mut || one()).unwrap();
        assert_eq!(*log.0.borrow(), vec![1, 0]);
        assert_eq!(next_block(), None);
    }
}
