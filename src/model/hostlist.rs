//! Hostlist patterns (`n[001-100]`, `rack[1-2]-n[1-4]`, `n1,n2,n[3-4]`) and IP auto-increment.
//!
//! Design notes:
//! - Semantics follow Warewulf 4.6's `internal/pkg/hostlist`: top-level commas separate
//!   patterns; each `[...]` holds comma-separated numbers or `a-b` ranges; several bracket groups
//!   form a cartesian product, left-most group varying slowest; zero padding is taken from the
//!   width of the range start (`[01-10]` → `01..10`). Order is preserved and duplicates are kept,
//!   as in Warewulf.
//! - Unlike Warewulf, which silently returns partial or empty results for bad input, every syntax
//!   problem is an error that says what to write instead (`n[-1]`, which Warewulf reads as
//!   `n0,n1`, included). Empty items between commas are skipped as in Warewulf: `n1,` is `n1`,
//!   and `,` expands to no names (callers decide what an empty list means).
//! - The size of the result is computed *before* expanding, so a typo like `n[1-999999999]`
//!   fails fast instead of allocating gigabytes; the cap is [`MAX_HOSTLIST`] names.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::ModelError;

/// Largest number of names one pattern may expand to.
pub const MAX_HOSTLIST: usize = 100_000;

/// One piece of a single (comma-free at top level) pattern.
enum Segment<'a> {
    Literal(&'a str),
    /// Numbers from one bracket group: (start, end inclusive, zero-pad width).
    Ranges(Vec<(u64, u64, usize)>),
}

fn err(pattern: &str, reason: impl Into<String>) -> ModelError {
    ModelError::Hostlist {
        pattern: pattern.to_owned(),
        reason: reason.into(),
    }
}

/// Expand a hostlist pattern into names, in order. See the module notes for the syntax.
pub fn expand_hostlist(pattern: &str) -> Result<Vec<String>, ModelError> {
    let parts = split_top_level(pattern)?;
    let mut parsed = Vec::with_capacity(parts.len());
    let mut total: usize = 0;
    for part in parts {
        let segments = parse_part(pattern, part)?;
        let count = segments.iter().try_fold(1usize, |acc, s| match s {
            Segment::Literal(_) => Some(acc),
            Segment::Ranges(r) => r
                .iter()
                .try_fold(0usize, |n, (a, b, _)| {
                    usize::try_from(b - a).ok()?.checked_add(1)?.checked_add(n)
                })
                .and_then(|n| acc.checked_mul(n)),
        });
        total = count
            .and_then(|c| total.checked_add(c))
            .filter(|t| *t <= MAX_HOSTLIST)
            .ok_or_else(|| {
                err(
                    pattern,
                    format!("it expands to more than {MAX_HOSTLIST} names; split it into smaller ranges"),
                )
            })?;
        parsed.push(segments);
    }
    let mut out = Vec::with_capacity(total);
    for segments in &parsed {
        expand_segments(segments, &mut String::new(), &mut out);
    }
    Ok(out)
}

/// Split on commas outside brackets, rejecting unbalanced or nested brackets and empty items.
fn split_top_level(pattern: &str) -> Result<Vec<&str>, ModelError> {
    if pattern.trim().is_empty() {
        return Err(err(pattern, "it is empty; give at least one node name"));
    }
    let mut parts = Vec::new();
    let mut depth = 0usize;
    let mut start = 0;
    for (i, c) in pattern.char_indices() {
        match c {
            '[' if depth > 0 => return Err(err(pattern, "brackets cannot be nested; write each range as name[a-b]")),
            '[' => depth = 1,
            ']' if depth == 0 => return Err(err(pattern, format!("']' at position {} has no matching '['", i + 1))),
            ']' => depth = 0,
            ',' if depth == 0 => {
                parts.push(&pattern[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if depth > 0 {
        return Err(err(pattern, "a '[' is never closed; add the missing ']'"));
    }
    parts.push(&pattern[start..]);
    let mut out = Vec::with_capacity(parts.len());
    for p in parts {
        let p = p.trim();
        // `n1,` and `n1,,n2` name n1 (and n2), and a lone `,` names nothing, as in Warewulf:
        // an extra comma loses nothing, so it is not worth an error.
        if p.is_empty() {
            continue;
        }
        if p.contains(char::is_whitespace) {
            return Err(err(
                pattern,
                format!("{p:?} contains whitespace; node names cannot contain spaces"),
            ));
        }
        out.push(p);
    }
    Ok(out)
}

fn parse_part<'a>(pattern: &str, part: &'a str) -> Result<Vec<Segment<'a>>, ModelError> {
    let mut segments = Vec::new();
    let mut rest = part;
    while let Some(open) = rest.find('[') {
        if open > 0 {
            segments.push(Segment::Literal(&rest[..open]));
        }
        // split_top_level guarantees a matching ']' after every '['.
        let close = open + rest[open..].find(']').unwrap_or(rest.len() - open);
        segments.push(Segment::Ranges(parse_ranges(pattern, &rest[open + 1..close])?));
        rest = &rest[close + 1..];
    }
    if !rest.is_empty() {
        segments.push(Segment::Literal(rest));
    }
    Ok(segments)
}

fn parse_ranges(pattern: &str, inner: &str) -> Result<Vec<(u64, u64, usize)>, ModelError> {
    if inner.is_empty() {
        return Err(err(
            pattern,
            "'[]' is empty; put numbers or ranges inside, e.g. [1-4,7]",
        ));
    }
    inner
        .split(',')
        .map(|item| {
            let (a, b) = match item.split_once('-') {
                Some((a, b)) => (a, b),
                None => (item, item),
            };
            let start = parse_number(pattern, a, item)?;
            let end = parse_number(pattern, b, item)?;
            if start > end {
                return Err(err(
                    pattern,
                    format!("range {item:?} goes backwards; write it as {b}-{a}"),
                ));
            }
            Ok((start, end, a.len()))
        })
        .collect()
}

fn parse_number(pattern: &str, s: &str, item: &str) -> Result<u64, ModelError> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(err(
            pattern,
            format!("{item:?} is not a number or a range like 1-10; only digits may appear inside brackets"),
        ));
    }
    s.parse::<u64>()
        .map_err(|_| err(pattern, format!("number {s:?} is too large")))
}

fn expand_segments(segments: &[Segment<'_>], prefix: &mut String, out: &mut Vec<String>) {
    let Some((first, rest)) = segments.split_first() else {
        out.push(prefix.clone());
        return;
    };
    let len = prefix.len();
    match first {
        Segment::Literal(s) => {
            prefix.push_str(s);
            expand_segments(rest, prefix, out);
        }
        Segment::Ranges(ranges) => {
            for &(a, b, width) in ranges {
                for n in a..=b {
                    use std::fmt::Write;
                    let _ = write!(prefix, "{n:0width$}");
                    expand_segments(rest, prefix, out);
                    prefix.truncate(len);
                }
            }
        }
    }
    prefix.truncate(len);
}

/// `ip + n`, for auto-incrementing addresses when adding a range of nodes. Overflow past the end
/// of the IPv4 or IPv6 address space is an error.
pub fn ip_add(ip: IpAddr, n: u64) -> Result<IpAddr, ModelError> {
    let overflow = || ModelError::IpOverflow { ip, n };
    Ok(match ip {
        IpAddr::V4(v4) => {
            let n = u32::try_from(n).map_err(|_| overflow())?;
            IpAddr::V4(Ipv4Addr::from(u32::from(v4).checked_add(n).ok_or_else(overflow)?))
        }
        IpAddr::V6(v6) => IpAddr::V6(Ipv6Addr::from(
            u128::from(v6).checked_add(u128::from(n)).ok_or_else(overflow)?,
        )),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ex(p: &str) -> Vec<String> {
        expand_hostlist(p).unwrap_or_else(|e| panic!("{p}: {e}"))
    }

    fn ex_err(p: &str) -> String {
        expand_hostlist(p).unwrap_err().to_string()
    }

    #[test]
    fn plain_names_and_lists() {
        assert_eq!(ex("node1"), ["node1"]);
        assert_eq!(ex("n1,n2,n[3-4]"), ["n1", "n2", "n3", "n4"]);
        assert_eq!(ex("n1, n2"), ["n1", "n2"]);
        assert_eq!(ex("n[1-3],n5,n[7-8,10]"), ["n1", "n2", "n3", "n5", "n7", "n8", "n10"]);
    }

    #[test]
    fn ranges_and_padding() {
        let v = ex("n[001-100]");
        assert_eq!(v.len(), 100);
        assert_eq!(v[0], "n001");
        assert_eq!(v[99], "n100");
        assert_eq!(ex("n[1,3,5-7]"), ["n1", "n3", "n5", "n6", "n7"]);
        assert_eq!(ex("n[8-11]"), ["n8", "n9", "n10", "n11"]);
        assert_eq!(ex("n[08-11]"), ["n08", "n09", "n10", "n11"]);
        assert_eq!(ex("n[4,1]"), ["n4", "n1"]);
        assert_eq!(ex("n[5]x"), ["n5x"]);
    }

    #[test]
    fn cartesian_left_major() {
        assert_eq!(
            ex("rack[1-2]-n[1-4]"),
            ["rack1-n1", "rack1-n2", "rack1-n3", "rack1-n4", "rack2-n1", "rack2-n2", "rack2-n3", "rack2-n4"]
        );
        assert_eq!(ex("r[1,2]-n[3,4]"), ["r1-n3", "r1-n4", "r2-n3", "r2-n4"]);
    }

    #[test]
    fn syntax_errors() {
        assert!(ex_err("n[1-3").contains("never closed"));
        assert!(ex_err("n1-3]").contains("no matching"));
        assert!(ex_err("n[[1-3]]").contains("nested"));
        assert!(ex_err("n[3-1]").contains("backwards"));
        assert!(ex_err("n[a-c]").contains("not a number"));
        assert!(ex_err("n[-1]").contains("not a number"));
        assert!(ex_err("n[]").contains("empty"));
        // Extra commas are skipped (Warewulf 4.7).
        assert_eq!(ex("n1,,n2"), ["n1", "n2"]);
        assert_eq!(ex("n01,"), ["n01"]);
        assert_eq!(ex(","), Vec::<String>::new());
        assert!(ex_err("").contains("empty"));
        assert!(ex_err("n1 n2").contains("whitespace"));
        assert!(ex_err("n[99999999999999999999999]").contains("too large"));
    }

    #[test]
    fn size_cap() {
        assert_eq!(ex("n[1-100000]").len(), MAX_HOSTLIST);
        assert!(ex_err("n[0-100000]").contains("more than 100000"));
        assert!(ex_err("a[1-1000]b[1-1000]").contains("more than"));
        assert!(ex_err("n[1-18446744073709551615]").contains("more than"));
        assert!(ex_err("n[1-60000],m[1-60000]").contains("more than"));
    }

    #[test]
    fn ip_increment() {
        let ip: IpAddr = "10.0.0.250".parse().unwrap();
        assert_eq!(ip_add(ip, 0).unwrap(), ip);
        assert_eq!(ip_add(ip, 10).unwrap().to_string(), "10.0.1.4");
        let top: IpAddr = "255.255.255.254".parse().unwrap();
        assert_eq!(ip_add(top, 1).unwrap().to_string(), "255.255.255.255");
        let e = ip_add(top, 2).unwrap_err();
        assert!(matches!(e, ModelError::IpOverflow { .. }));
        assert!(e.to_string().contains("past the end"));
        assert!(ip_add(ip, u64::MAX).is_err());
        let v6: IpAddr = "fd00::ffff".parse().unwrap();
        assert_eq!(ip_add(v6, 1).unwrap().to_string(), "fd00::1:0");
        let v6top: IpAddr = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff".parse().unwrap();
        assert!(ip_add(v6top, 1).is_err());
    }
}

/// Fuzzing (issue 12, part 6): any string a user can type as a node list either
/// expands to at most [`MAX_HOSTLIST`] well-formed names or is refused with an error;
/// it never panics and never allocates without bound.
#[cfg(test)]
mod fuzz {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 5000, ..ProptestConfig::default() })]

        #[test]
        fn any_pattern_expands_boundedly_or_is_refused(p in "[a-z0-9\\[\\],\\-. ]{0,40}") {
            if let Ok(names) = expand_hostlist(&p) {
                prop_assert!(names.len() <= MAX_HOSTLIST);
                for n in &names {
                    prop_assert!(!n.contains('[') && !n.contains(']'), "{p:?} gave {n:?}");
                }
            }
        }

        #[test]
        fn huge_ranges_are_refused_not_allocated(a in 0u64..10, b in 100_001u64..u64::MAX) {
            let p = format!("n[{a}-{b}]");
            prop_assert!(expand_hostlist(&p).is_err());
        }
    }
}
