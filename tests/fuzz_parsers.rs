//! Every fuzz target of `fuzzing.rs` under proptest, for a bounded number of cases in the normal
//! suite: arbitrary bytes, and valid inputs with a few bytes replaced, inserted or deleted. A
//! case passes when the parser does not panic and no single allocation it makes exceeds
//! [`LARGEST_ALLOCATION`] — inputs here are at most a few hundred KiB, so a larger allocation
//! means a size taken from the input without checking it against the file. `cargo xtask fuzz`
//! runs the same targets under libFuzzer for longer.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use lm_integration_tests::fuzzing::{seeds, target, TARGETS};
use proptest::prelude::*;

/// The largest single allocation a case may make (libFuzzer's `-malloc_limit_mb` in
/// `cargo xtask fuzz` is the same).
const LARGEST_ALLOCATION: usize = 64 << 20;

thread_local! {
    /// The largest allocation this thread made since the last reset.
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

/// The system allocator, recording each thread's largest allocation.
struct Recording;

fn record(size: usize) {
    let _ = LARGEST.try_with(|l| l.set(l.get().max(size)));
}

// SAFETY: every call is passed on unchanged to the system allocator; recording the size only
// touches a const-initialized thread-local cell, which never allocates.
unsafe impl GlobalAlloc for Recording {
    // SAFETY: the caller upholds `GlobalAlloc`'s contract, which this passes on.
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        record(layout.size());
        // SAFETY: the caller's contract for `alloc` is passed on.
        unsafe { System.alloc(layout) }
    }
    // SAFETY: the caller upholds `GlobalAlloc`'s contract, which this passes on.
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        record(layout.size());
        // SAFETY: as above.
        unsafe { System.alloc_zeroed(layout) }
    }
    // SAFETY: the caller upholds `GlobalAlloc`'s contract, which this passes on.
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }
    // SAFETY: the caller upholds `GlobalAlloc`'s contract, which this passes on.
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        record(new_size);
        // SAFETY: as above.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Recording = Recording;

/// Runs target `name` on `bytes`, failing when one allocation exceeds the bound.
fn run(name: &str, bytes: &[u8]) -> Result<(), TestCaseError> {
    let Some(t) = target(name) else {
        return Err(TestCaseError::fail(format!("no target {name}")));
    };
    LARGEST.with(|l| l.set(0));
    t(bytes);
    let largest = LARGEST.with(Cell::get);
    prop_assert!(
        largest <= LARGEST_ALLOCATION,
        "{name}: one allocation of {largest} bytes for an input of {}",
        bytes.len()
    );
    Ok(())
}

/// `seed` with each edit applied: (position fraction, 0 replace / 1 insert / 2 delete, byte).
fn mutate(seed: &[u8], edits: &[(f64, u8, u8)]) -> Vec<u8> {
    let mut b = seed.to_vec();
    for &(at, kind, byte) in edits {
        let i = ((b.len() as f64) * at) as usize;
        match kind {
            0 if i < b.len() => b[i] = byte,
            1 => b.insert(i.min(b.len()), byte),
            _ if i < b.len() => {
                b.remove(i);
            }
            _ => {}
        }
    }
    b
}

/// Every target has seeds, and every seed passes (so mutations start from accepted inputs).
#[test]
fn every_target_has_seeds_that_pass() {
    for (name, _) in TARGETS {
        let s = seeds(name);
        assert!(!s.is_empty(), "{name} has no seeds");
        for seed in s {
            run(name, &seed).unwrap();
        }
    }
}

/// Bytes that reach past a header: zeros, 0xff and random, up to 2 KiB.
fn arbitrary_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..2048),
        (0usize..2048, prop_oneof![Just(0u8), Just(0xff)]).prop_map(|(n, b)| vec![b; n]),
    ]
}

fn edits() -> impl Strategy<Value = Vec<(f64, u8, u8)>> {
    prop::collection::vec((0.0..1.0f64, 0u8..3, any::<u8>()), 1..8)
}

/// One proptest per target and kind of input, `cases` each.
macro_rules! fuzz_tests {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            use super::*;
            proptest! {
                #![proptest_config(ProptestConfig { cases: 200, failure_persistence: None, ..ProptestConfig::default() })]

                #[test]
                fn never_panics_on_arbitrary_bytes(bytes in arbitrary_bytes()) {
                    run(stringify!($name), &bytes)?;
                }

                #[test]
                fn never_panics_on_damaged_valid_files(pick in any::<prop::sample::Index>(), edits in edits()) {
                    let s = seeds(stringify!($name));
                    run(stringify!($name), &mutate(&s[pick.index(s.len())], &edits))?;
                }
            }
        }
    )*};
}

fuzz_tests!(
    config,
    tokenizer,
    task_jsonl,
    hf_config,
    safetensors,
    weights_index,
    checkpoint_state,
    shard,
    manifest,
    import,
    metrics,
    tensorboard,
);

/// The modules above cover every target.
#[test]
fn every_target_has_its_tests() {
    let here = include_str!("fuzz_parsers.rs");
    for (name, _) in TARGETS {
        assert!(
            here.contains(&format!("    {name},\n")),
            "{name} has no proptests"
        );
    }
}
