//! lm-train patch: a no-grad mode and activation checkpointing.
//!
//! [`no_grad`] runs a closure without recording the graph: tensors made inside have no backprop
//! op, so no activation is kept for a backward pass. [`Tensor::checkpoint`] runs a function of
//! tensors that way and records one node instead of the function's graph; the backward pass
//! runs the function again on the same inputs, with the graph, and back-propagates through that
//! recomputation (the inputs' gradients and those of every variable the function reads, which
//! it may capture). Memory: the function's activations live only while its own backward runs.

use crate::op::{BackpropOp, Op};
use crate::{Result, Tensor, TensorId};
use std::cell::{Cell, RefCell};
use std::collections::HashSet;
use std::sync::Arc;

thread_local! {
    static GRAD_ENABLED: Cell<bool> = const { Cell::new(true) };
    /// The open recordings of [`record_variable_reads`], innermost last.
    static READS: RefCell<Vec<HashSet<TensorId>>> = const { RefCell::new(Vec::new()) };
    /// The open forward runs of [`Tensor::checkpoint`], innermost last: a read counts in each.
    static CHECKPOINT_READS: RefCell<Vec<VariableReads>> = const { RefCell::new(Vec::new()) };
}

/// The variables a checkpointed function read in its forward run, in the order first read: the
/// only ones its recomputation adds gradients to, so the backward pass can announce a variable
/// as final once every recomputation that reads it is done (in this order, the same on every
/// data-parallel rank).
#[derive(Debug, Default)]
pub struct VariableReads {
    order: Vec<TensorId>,
    seen: HashSet<TensorId>,
}

impl VariableReads {
    fn note(&mut self, id: TensorId) {
        if self.seen.insert(id) {
            self.order.push(id);
        }
    }

    /// The variables, in the order first read.
    pub fn ids(&self) -> &[TensorId] {
        &self.order
    }
}

/// Runs `f` and returns with its result the ids of the variables that ops made inside it took
/// as arguments (with or without grad mode). Recordings nest: a read counts in the innermost
/// one only. A caller that shards parameters learns this way which variables a block reads.
pub fn record_variable_reads<T>(f: impl FnOnce() -> T) -> (T, HashSet<TensorId>) {
    struct Pop;
    impl Drop for Pop {
        fn drop(&mut self) {
            READS.with(|r| r.borrow_mut().pop());
        }
    }
    READS.with(|r| r.borrow_mut().push(HashSet::new()));
    let pop = Pop;
    let out = f();
    let reads = READS.with(|r| r.borrow_mut().last_mut().map(std::mem::take));
    drop(pop);
    (out, reads.unwrap_or_default())
}

/// Notes `t` as read by an op if it is a variable and a recording is open.
pub(crate) fn note_read(t: &Tensor) {
    if !t.is_variable() {
        return;
    }
    READS.with(|r| {
        if let Some(top) = r.borrow_mut().last_mut() {
            top.insert(t.id());
        }
    });
    CHECKPOINT_READS.with(|r| {
        for open in r.borrow_mut().iter_mut() {
            open.note(t.id());
        }
    });
}

/// `f()` and the variables its ops read, for [`Tensor::checkpoint`] (every open run counts a
/// read, so a nested checkpoint's reads are its parent's too).
fn checkpoint_reads<T>(f: impl FnOnce() -> T) -> (T, VariableReads) {
    struct Pop;
    impl Drop for Pop {
        fn drop(&mut self) {
            CHECKPOINT_READS.with(|r| r.borrow_mut().pop());
        }
    }
    CHECKPOINT_READS.with(|r| r.borrow_mut().push(VariableReads::default()));
    let pop = Pop;
    let out = f();
    let reads = CHECKPOINT_READS.with(|r| r.borrow_mut().last_mut().map(std::mem::take));
    drop(pop);
    (out, reads.unwrap_or_default())
}

/// Whether ops on this thread record the graph (true unless inside [`no_grad`]).
pub fn grad_enabled() -> bool {
    GRAD_ENABLED.with(|g| g.get())
}

/// Runs `f` without recording the graph on this thread.
pub fn no_grad<T>(f: impl FnOnce() -> T) -> T {
    with_grad_mode(false, f)
}

/// Runs `f` with the graph recorded or not, restoring the previous mode afterwards (also on
/// unwinding).
pub fn with_grad_mode<T>(enabled: bool, f: impl FnOnce() -> T) -> T {
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            GRAD_ENABLED.with(|g| g.set(self.0));
        }
    }
    let _restore = Restore(GRAD_ENABLED.with(|g| g.replace(enabled)));
    f()
}

/// A function recomputed in the backward pass: the same inputs must give the same result
/// (a random draw inside it must be replayed, e.g. dropout from a restored generator).
pub type RecomputeFn = Arc<dyn Fn(&[Tensor]) -> Result<Tensor> + Send + Sync>;

impl Tensor {
    /// `f(args)`, whose activations are not kept: recomputed from `args` when the backward
    /// pass reaches the result. Without grad mode this is `f(args)`. `f` may capture variables
    /// and untracked tensors; a tracked tensor it reads that is neither (made from variables
    /// outside `f`) must be one of `args`, or a backward pass that frees the graph may have
    /// released it before the recomputation needs it.
    pub fn checkpoint(args: &[Tensor], f: RecomputeFn) -> Result<Tensor> {
        if !grad_enabled() {
            return f(args);
        }
        let (y, reads) = checkpoint_reads(|| no_grad(|| f(args)));
        let op = Op::Recompute(args.to_vec(), f, Arc::new(reads));
        Ok(y?.with_backprop_op(BackpropOp::from_op(op)))
    }
}
