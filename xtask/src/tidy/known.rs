//! What is over a limit today and not yet fixed, with its measured size. Each entry may shrink
//! but not grow; one that is fixed (or smaller than listed) must be removed (or lowered) here,
//! so the list only gets shorter.

use super::{Rule, Violation};

/// A known violation: `size` is the most lines (file and function length) or the most
/// occurrences in the file (panics) allowed until it is fixed.
#[derive(Debug, Clone, Copy)]
pub struct Known {
    /// The rule.
    pub rule: Rule,
    /// The file, relative to the workspace root.
    pub file: &'static str,
    /// The function (function length); empty otherwise.
    pub item: &'static str,
    /// Lines or count as measured when listed.
    pub size: usize,
}

/// The list: empty since every file and function is within its limit (2026-12-07).
pub const KNOWN: &[Known] = &[];

/// The verdict on a run: new violations (not listed, or grown), how many were known, and the
/// listed entries that are fixed or smaller than listed.
#[derive(Debug, Default)]
pub struct Verdict {
    /// Violations that fail the check.
    pub new: Vec<Violation>,
    /// Violations covered by the list.
    pub known: usize,
    /// Entries to remove or lower, described.
    pub stale: Vec<String>,
}

/// Judges `found` against [`KNOWN`].
pub fn judge(found: &[Violation]) -> Verdict {
    judge_against(found, KNOWN)
}

/// Judges `found` against `list`.
pub fn judge_against(found: &[Violation], list: &[Known]) -> Verdict {
    let mut v = Verdict::default();
    let matches = |k: &Known, f: &Violation| {
        k.rule == f.rule
            && f.file.to_str() == Some(k.file)
            && (k.rule == Rule::Panic || k.item == f.item)
    };
    for f in found {
        let Some(k) = list.iter().find(|k| matches(k, f)) else {
            v.new.push(f.clone());
            continue;
        };
        let measured = if k.rule == Rule::Panic {
            found.iter().filter(|g| matches(k, g)).count()
        } else {
            f.size
        };
        if measured > k.size {
            let mut grown = f.clone();
            grown.what = format!("{} — grown past the {} listed as known", grown.what, k.size);
            v.new.push(grown);
        } else {
            v.known += 1;
        }
    }
    for k in list {
        let measured = if k.rule == Rule::Panic {
            found.iter().filter(|g| matches(k, g)).count()
        } else {
            found
                .iter()
                .filter(|g| matches(k, g))
                .map(|g| g.size)
                .max()
                .unwrap_or(0)
        };
        if measured < k.size {
            let todo = if measured == 0 {
                "fixed: remove it from the list".to_string()
            } else {
                format!("smaller: lower its size to {measured}")
            };
            v.stale.push(format!(
                "{} {} {}: {} listed, {todo}",
                k.rule, k.file, k.item, k.size
            ));
        }
    }
    v
}
