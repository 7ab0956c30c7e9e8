//! Reading Rust source well enough for the tidy rules: comments and literals blanked out (so a
//! `crate::x` in a doc comment or an `unwrap` in a string is not code), functions and test
//! modules found by their braces. Line numbers are kept: blanking replaces characters by spaces
//! and never removes a newline.

/// `src` with every comment and the contents of every string and char literal replaced by
/// spaces (newlines kept).
pub fn code_only(src: &str) -> String {
    let b = src.as_bytes();
    let mut out = b.to_vec();
    let mut i = 0;
    let blank = |out: &mut Vec<u8>, from: usize, to: usize| {
        for c in &mut out[from..to.min(b.len())] {
            if *c != b'\n' {
                *c = b' ';
            }
        }
    };
    while i < b.len() {
        let rest = &b[i..];
        if rest.starts_with(b"//") {
            let end = rest
                .iter()
                .position(|&c| c == b'\n')
                .map_or(b.len(), |p| i + p);
            blank(&mut out, i, end);
            i = end;
        } else if rest.starts_with(b"/*") {
            let end = block_comment_end(b, i);
            blank(&mut out, i, end);
            i = end;
        } else if let Some((open, hashes)) = raw_string_start(b, i) {
            let end = raw_string_end(b, open, hashes);
            blank(&mut out, open, end.saturating_sub(hashes + 1));
            i = end;
        } else if b[i] == b'"' && !is_ident_byte(b, i.wrapping_sub(1)) || rest.starts_with(b"b\"") {
            let open = if b[i] == b'b' { i + 1 } else { i };
            let end = quoted_end(b, open, b'"');
            blank(&mut out, open + 1, end.saturating_sub(1));
            i = end;
        } else if b[i] == b'\'' {
            i = char_literal(b, i, &mut out);
        } else {
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn is_ident_byte(b: &[u8], i: usize) -> bool {
    b.get(i)
        .is_some_and(|c| c.is_ascii_alphanumeric() || *c == b'_')
}

/// Past the `*/` closing the (nestable) block comment opened at `i`.
fn block_comment_end(b: &[u8], mut i: usize) -> usize {
    let mut depth = 0;
    while i < b.len() {
        if b[i..].starts_with(b"/*") {
            depth += 1;
            i += 2;
        } else if b[i..].starts_with(b"*/") {
            depth -= 1;
            i += 2;
            if depth == 0 {
                return i;
            }
        } else {
            i += 1;
        }
    }
    b.len()
}

/// `r"`, `r#"`, `br##"` … at `i` (not inside an identifier): (index of the opening quote,
/// number of `#`).
fn raw_string_start(b: &[u8], i: usize) -> Option<(usize, usize)> {
    if is_ident_byte(b, i.wrapping_sub(1)) {
        return None;
    }
    let mut j = i;
    if b.get(j) == Some(&b'b') {
        j += 1;
    }
    if b.get(j) != Some(&b'r') {
        return None;
    }
    j += 1;
    let hashes = b[j..].iter().take_while(|&&c| c == b'#').count();
    (b.get(j + hashes) == Some(&b'"')).then_some((j + hashes, hashes))
}

/// Past the closing `"###` of a raw string whose opening quote is at `open`.
fn raw_string_end(b: &[u8], open: usize, hashes: usize) -> usize {
    let mut i = open + 1;
    while i < b.len() {
        if b[i] == b'"'
            && b[i + 1..]
                .iter()
                .take(hashes)
                .filter(|&&c| c == b'#')
                .count()
                == hashes
        {
            return i + 1 + hashes;
        }
        i += 1;
    }
    b.len()
}

/// Past the closing `quote` of an escaped literal opened at `open`.
fn quoted_end(b: &[u8], open: usize, quote: u8) -> usize {
    let mut i = open + 1;
    while i < b.len() {
        match b[i] {
            b'\\' => i += 2,
            c if c == quote => return i + 1,
            _ => i += 1,
        }
    }
    b.len()
}

/// A char literal at `i` blanked (returns the index past it); a lifetime or label skipped.
fn char_literal(b: &[u8], i: usize, out: &mut [u8]) -> usize {
    let is_char = match b.get(i + 1) {
        Some(b'\\') => true,
        Some(_) => {
            // 'x' (one char, possibly multi-byte) rather than 'label.
            let len = utf8_len(b[i + 1]);
            b.get(i + 1 + len) == Some(&b'\'')
        }
        None => false,
    };
    if !is_char {
        return i + 1;
    }
    let end = quoted_end(b, i, b'\'');
    for c in &mut out[i + 1..end.saturating_sub(1)] {
        *c = b' ';
    }
    end
}

fn utf8_len(first: u8) -> usize {
    match first {
        0xF0..=0xFF => 4,
        0xE0..=0xEF => 3,
        0xC0..=0xDF => 2,
        _ => 1,
    }
}

/// The index just past the brace that closes the `{` at `open` in blanked code.
pub fn matching_brace(code: &[u8], open: usize) -> usize {
    let mut depth = 0usize;
    for (k, &c) in code.iter().enumerate().skip(open) {
        match c {
            b'{' => depth += 1,
            b'}' => {
                depth -= 1;
                if depth == 0 {
                    return k + 1;
                }
            }
            _ => {}
        }
    }
    code.len()
}

/// 1-based line of byte `at`.
pub fn line_of(code: &str, at: usize) -> usize {
    code.as_bytes()[..at.min(code.len())]
        .iter()
        .filter(|&&c| c == b'\n')
        .count()
        + 1
}

/// A function with a body: its name, first and last line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Function {
    /// The name after `fn`.
    pub name: String,
    /// Line of `fn`.
    pub first: usize,
    /// Line of the closing brace.
    pub last: usize,
}

/// Every `fn` with a body in blanked code (nested ones too, each measured whole).
pub fn functions(code: &str) -> Vec<Function> {
    let b = code.as_bytes();
    let mut out = vec![];
    for at in word_positions(code, "fn") {
        let name: String = code[at + 2..]
            .trim_start()
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect();
        if name.is_empty() {
            continue; // `fn(` pointer types
        }
        let Some(body) = b[at..].iter().position(|&c| c == b'{' || c == b';') else {
            continue;
        };
        if b[at + body] == b';' {
            continue; // a declaration without a body
        }
        let end = matching_brace(b, at + body);
        out.push(Function {
            name,
            first: line_of(code, at),
            last: line_of(code, end.saturating_sub(1)),
        });
    }
    out
}

/// Byte positions of `word` as a whole word in `code`.
pub fn word_positions<'a>(code: &'a str, word: &'a str) -> impl Iterator<Item = usize> + 'a {
    let b = code.as_bytes();
    code.match_indices(word)
        .map(|(i, _)| i)
        .filter(move |&i| !is_ident_byte(b, i.wrapping_sub(1)) && !is_ident_byte(b, i + word.len()))
}

/// Byte ranges of test-only code: the item after each `#[cfg(test)]` (a module or function,
/// through its closing brace) and each `#[test]` function.
pub fn test_ranges(code: &str) -> Vec<std::ops::Range<usize>> {
    let b = code.as_bytes();
    let mut out = vec![];
    for marker in ["#[cfg(test)]", "#[test]"] {
        for (at, _) in code.match_indices(marker) {
            let Some(open) = b[at..].iter().position(|&c| c == b'{' || c == b';') else {
                continue;
            };
            if b[at + open] == b'{' {
                out.push(at..matching_brace(b, at + open));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comments_and_literals_are_blanked_and_lines_kept() {
        let src = "let a = \"x.unwrap()\"; // crate::y\n/* crate::z\n */ let c = '\"'; fn f<'a>() {}\nr#\"panic!()\"#";
        let code = code_only(src);
        assert_eq!(code.lines().count(), src.lines().count());
        assert!(!code.contains("unwrap") && !code.contains("crate::") && !code.contains("panic"));
        assert!(code.contains("fn f<'a>() {}"), "{code}");
    }

    #[test]
    fn functions_are_measured_by_their_braces() {
        let code = code_only(
            "fn a() {\n  let s = \"}\";\n}\ntrait T { fn b(&self); }\nfn c() { if x { } }\n",
        );
        let f = functions(&code);
        let got: Vec<(&str, usize, usize)> = f
            .iter()
            .map(|f| (f.name.as_str(), f.first, f.last))
            .collect();
        assert_eq!(got, vec![("a", 1, 3), ("c", 5, 5)]);
    }

    #[test]
    fn test_modules_are_found() {
        let code =
            "fn lib() {}\n#[cfg(test)]\nmod tests { fn t() { x.unwrap(); } }\nfn after() {}\n";
        let r = test_ranges(code);
        assert_eq!(r.len(), 1);
        assert!(code[r[0].clone()].contains("unwrap") && !code[r[0].clone()].contains("after"));
    }
}
