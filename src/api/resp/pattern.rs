//! Redis's glob patterns (`KEYS`, `SCAN … MATCH`, `CONFIG GET`): `*`, `?`, `[abc]`, `[^a-z]` and
//! `\` escapes, matched against bytes.
//!
//! Invariant: matching takes time proportional to pattern length × subject length at worst (one
//! backtracking point, the last `*`), whatever the pattern, so a client cannot make the node spin.

/// The literal prefix of `pattern`: every key it matches starts with it, so a scan can ask the
/// store for that prefix only.
pub fn literal_prefix(pattern: &[u8]) -> Vec<u8> {
    let mut prefix = Vec::new();
    let mut rest = pattern;
    while let [first, tail @ ..] = rest {
        match first {
            b'*' | b'?' | b'[' => break,
            b'\\' => match tail {
                [escaped, after @ ..] => {
                    prefix.push(*escaped);
                    rest = after;
                }
                [] => break,
            },
            literal => {
                prefix.push(*literal);
                rest = tail;
            }
        }
    }
    prefix
}

/// Whether `subject` matches `pattern` (case-sensitive, as `KEYS` and `SCAN`).
pub fn matches(pattern: &[u8], subject: &[u8]) -> bool {
    let (mut p, mut s) = (0, 0);
    // Where to resume after the last `*`: its pattern position and the subject position it
    // currently stands for.
    let mut star: Option<(usize, usize)> = None;
    while s < subject.len() {
        match step(pattern, p, subject[s]) {
            Step::Star => {
                star = Some((p + 1, s));
                p += 1;
                continue;
            }
            Step::Matched(next) => {
                p = next;
                s += 1;
                continue;
            }
            Step::Failed => {}
        }
        match star {
            Some((after_star, matched_to)) => {
                p = after_star;
                s = matched_to + 1;
                star = Some((after_star, matched_to + 1));
            }
            None => return false,
        }
    }
    pattern[p.min(pattern.len())..]
        .iter()
        .all(|&byte| byte == b'*')
}

enum Step {
    /// A `*` at this position.
    Star,
    /// The byte matched the element at this position; the next element starts here.
    Matched(usize),
    Failed,
}

/// Matches one subject byte against the pattern element at `p`.
fn step(pattern: &[u8], p: usize, byte: u8) -> Step {
    match pattern.get(p) {
        None => Step::Failed,
        Some(b'*') => Step::Star,
        Some(b'?') => Step::Matched(p + 1),
        Some(b'\\') => match pattern.get(p + 1) {
            Some(&escaped) if escaped == byte => Step::Matched(p + 2),
            Some(_) => Step::Failed,
            None if byte == b'\\' => Step::Matched(p + 1),
            None => Step::Failed,
        },
        Some(b'[') => class(pattern, p + 1, byte),
        Some(&literal) if literal == byte => Step::Matched(p + 1),
        Some(_) => Step::Failed,
    }
}

/// Matches `byte` against the class starting after its `[` at `start`.
fn class(pattern: &[u8], start: usize, byte: u8) -> Step {
    let mut i = start;
    let negated = pattern.get(i) == Some(&b'^');
    if negated {
        i += 1;
    }
    let mut found = false;
    loop {
        match pattern.get(i) {
            // An unclosed class ends with the pattern, as in Redis.
            None => break,
            Some(b']') => {
                i += 1;
                break;
            }
            Some(b'\\') if i + 1 < pattern.len() => {
                found |= pattern[i + 1] == byte;
                i += 2;
            }
            Some(&low) if pattern.get(i + 1) == Some(&b'-') && i + 2 < pattern.len() => {
                let high = pattern[i + 2];
                let (low, high) = if low <= high {
                    (low, high)
                } else {
                    (high, low)
                };
                found |= (low..=high).contains(&byte);
                i += 3;
            }
            Some(&member) => {
                found |= member == byte;
                i += 1;
            }
        }
    }
    if found != negated {
        Step::Matched(i)
    } else {
        Step::Failed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_as_in_redis() {
        let cases: &[(&str, &str, bool)] = &[
            ("*", "", true),
            ("*", "anything", true),
            ("h?llo", "hello", true),
            ("h?llo", "hllo", false),
            ("h*llo", "heeeello", true),
            ("h[ae]llo", "hallo", true),
            ("h[ae]llo", "hillo", false),
            ("h[^e]llo", "hallo", true),
            ("h[^e]llo", "hello", false),
            ("h[a-b]llo", "hbllo", true),
            ("h[a-b]llo", "hcllo", false),
            ("key:*", "key:000000000001", true),
            ("key:*", "other", false),
            ("a\\*b", "a*b", true),
            ("a\\*b", "axb", false),
            (
                "*a*a*a*b",
                "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaac",
                false,
            ),
            ("user:*:name", "user:42:name", true),
        ];
        for &(pattern, subject, expected) in cases {
            assert_eq!(
                matches(pattern.as_bytes(), subject.as_bytes()),
                expected,
                "{pattern} against {subject}"
            );
        }
    }

    #[test]
    fn the_literal_prefix_stops_at_the_first_wildcard() {
        assert_eq!(literal_prefix(b"key:*"), b"key:");
        assert_eq!(literal_prefix(b"a\\*b*"), b"a*b");
        assert_eq!(literal_prefix(b"*"), b"");
        assert_eq!(literal_prefix(b"ab[c]"), b"ab");
    }
}
