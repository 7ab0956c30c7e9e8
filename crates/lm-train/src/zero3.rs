//! ZeRO-3 block by block. With activation checkpointing, a rank gathers a recomputed block's
//! parameters just before the block runs — in the forward pass, and again for its
//! recomputation in the backward pass — and frees the previous block's, so it holds the
//! parameters read outside the recomputed blocks plus one block's at a time (FSDP's and
//! DeepSpeed's per-unit gathering). Blocks that keep their activations hold their parameters in
//! the graph until backward, so without checkpointing a step gathers every parameter first.
//!
//! Which parameters a block reads is learned on the first step, when every parameter is whole:
//! candle's `record_variable_reads` records the variables each recomputed block's ops take, and
//! those the forward pass reads outside them. A parameter read outside (T5's position bias,
//! made from block 0's parameters before the blocks run; a tied embedding) is never freed
//! during the step. Every rank runs the same model, so the plans and the gathers agree.
//!
//! The trainer uses it for `train.zero_stage = 3` with `train.activation_checkpointing`; a
//! custom loop does the same: [`Zero3Gate::start`] per step (with the plan of an earlier step,
//! if any), the forward pass in [`Zero3Gate::forward`], the backward pass (with the strategy's
//! reduction) in [`Zero3Gate::backward`], then keep [`Zero3Gate::learned_plan`].

use std::cell::{Cell, RefCell};
use std::collections::HashSet;
use std::rc::Rc;
use std::sync::Arc;

use candle_core::{Tensor, TensorId, Var};
use lm_dist::Strategy;
use lm_models::gate::BlockGate;

/// Which parameters (indices into the trained variables) each recomputed block reads alone,
/// and those a step keeps whole throughout.
#[derive(Debug, Clone, PartialEq)]
pub struct BlockPlan {
    /// Per recomputed block, by its number in the forward pass.
    blocks: Vec<Vec<usize>>,
    /// Read outside the recomputed blocks, or by none of them.
    always: Vec<usize>,
}

impl BlockPlan {
    /// The plan from what the blocks read (`blocks`, by number) and what the forward pass read
    /// outside them, over `vars`.
    fn new(vars: &[Var], blocks: &[HashSet<TensorId>], outside: &HashSet<TensorId>) -> Self {
        let index = |set: &HashSet<TensorId>| -> Vec<usize> {
            (0..vars.len())
                .filter(|&i| {
                    let id = vars[i].as_tensor().id();
                    set.contains(&id) && !outside.contains(&id)
                })
                .collect()
        };
        let blocks: Vec<Vec<usize>> = blocks.iter().map(index).collect();
        let in_blocks: HashSet<usize> = blocks.iter().flatten().copied().collect();
        let always = (0..vars.len()).filter(|i| !in_blocks.contains(i)).collect();
        Self { blocks, always }
    }

    /// Parameters kept whole for the whole step.
    pub fn always(&self) -> &[usize] {
        &self.always
    }

    /// What a rank holds of the parameters at once during a step: the blocks gated, the values
    /// kept whole throughout and the largest block's values.
    pub fn extent(&self, vars: &[Var]) -> Zero3Extent {
        let values = |ix: &[usize]| ix.iter().map(|&i| vars[i].elem_count()).sum::<usize>();
        Zero3Extent {
            blocks: self.blocks.len(),
            always_values: values(&self.always),
            largest_block_values: self.blocks.iter().map(|b| values(b)).max().unwrap_or(0),
        }
    }
}

/// How ZeRO-3 gathers a step's parameters with activation checkpointing
/// ([`crate::Trainer::zero3_extent`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Zero3Extent {
    /// Recomputed blocks whose parameters are gathered as they run.
    pub blocks: usize,
    /// Parameter values kept whole for the whole step (read outside the blocks).
    pub always_values: usize,
    /// The largest block's parameter values (gathered one block at a time).
    pub largest_block_values: usize,
}

/// The gate of one step: learning (every parameter whole, reads recorded) or gathering block by
/// block from a learned plan.
pub struct Zero3Gate {
    strategy: Arc<Strategy>,
    vars: Vec<Var>,
    plan: Option<Arc<BlockPlan>>,
    /// Learning: what each recomputed block read, by number.
    learned: RefCell<Vec<HashSet<TensorId>>>,
    /// Learning: what the forward passes read outside the blocks.
    outside: RefCell<HashSet<TensorId>>,
    /// The block whose parameters are gathered now.
    current: Cell<Option<usize>>,
}

impl Zero3Gate {
    /// A step's gate: with `plan`, the parameters it keeps whole are gathered now; without,
    /// every parameter is, and this step learns the plan.
    pub fn start(
        strategy: Arc<Strategy>,
        vars: &[Var],
        plan: Option<Arc<BlockPlan>>,
    ) -> lm_dist::Result<Rc<Self>> {
        match &plan {
            Some(p) => strategy.gather_some(vars, p.always())?,
            None => strategy.gather_parameters(vars)?,
        }
        Ok(Rc::new(Self {
            strategy,
            vars: vars.to_vec(),
            plan,
            learned: RefCell::new(vec![]),
            outside: RefCell::new(HashSet::new()),
            current: Cell::new(None),
        }))
    }

    /// Runs a forward pass, noting (when learning) the parameters it reads outside the blocks.
    pub fn forward<T>(self: &Rc<Self>, f: impl FnOnce() -> T) -> T {
        let gate: Rc<dyn BlockGate> = self.clone();
        if self.plan.is_some() {
            return lm_models::gate::with_block_gate(gate, f);
        }
        let (out, reads) = lm_models::gate::with_block_gate(gate, || {
            candle_core::recompute::record_variable_reads(f)
        });
        self.outside.borrow_mut().extend(reads);
        out
    }

    /// Runs a backward pass with the gate around the blocks' recomputations.
    pub fn backward<T>(self: &Rc<Self>, f: impl FnOnce() -> T) -> T {
        lm_models::gate::with_block_gate(self.clone(), f)
    }

    /// The plan this step learned (`None` when it followed one).
    pub fn learned_plan(&self) -> Option<Arc<BlockPlan>> {
        if self.plan.is_some() {
            return None;
        }
        let plan = BlockPlan::new(&self.vars, &self.learned.borrow(), &self.outside.borrow());
        Some(Arc::new(plan))
    }

    /// Block `seq`'s parameters whole, the previous block's freed (those it does not share).
    fn enter(&self, plan: &BlockPlan, seq: usize) -> lm_dist::Result<()> {
        if self.current.get() == Some(seq) {
            return Ok(());
        }
        let none = vec![];
        let next = plan.blocks.get(seq).unwrap_or(&none);
        if let Some(prev) = self.current.get() {
            let free: Vec<usize> = plan
                .blocks
                .get(prev)
                .unwrap_or(&none)
                .iter()
                .copied()
                .filter(|i| !next.contains(i))
                .collect();
            self.strategy.release_some(&self.vars, &free)?;
        }
        self.strategy.gather_some(&self.vars, next)?;
        self.current.set(Some(seq));
        Ok(())
    }
}

impl BlockGate for Zero3Gate {
    fn run(
        &self,
        seq: usize,
        block: &mut dyn FnMut() -> candle_core::Result<Tensor>,
    ) -> candle_core::Result<Tensor> {
        let Some(plan) = &self.plan else {
            let (out, reads) = candle_core::recompute::record_variable_reads(block);
            let mut learned = self.learned.borrow_mut();
            if learned.len() <= seq {
                learned.resize(seq + 1, HashSet::new());
            }
            learned[seq].extend(reads);
            return out;
        };
        self.enter(plan, seq).map_err(candle_core::Error::wrap)?;
        block()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn a_plan_keeps_whole_what_is_read_outside_the_blocks_or_by_none() {
        let v = |x: f32| Var::new(&[x], &Device::Cpu).unwrap();
        let vars = vec![v(0.0), v(1.0), v(2.0), v(3.0), v(4.0)];
        let id = |i: usize| vars[i].as_tensor().id();
        // Block 0 reads 0 and 1, block 1 reads 2 and 1 (shared), the pass reads 0 outside too;
        // 3 and 4 are read by no block.
        let blocks = vec![HashSet::from([id(0), id(1)]), HashSet::from([id(2), id(1)])];
        let outside = HashSet::from([id(0), id(4)]);
        let plan = BlockPlan::new(&vars, &blocks, &outside);
        assert_eq!(plan.blocks, vec![vec![1], vec![1, 2]]);
        assert_eq!(plan.always, vec![0, 3, 4]);
    }
}
