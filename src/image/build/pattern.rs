//! Exclude patterns with Warewulf's exact semantics.
//!
//! Warewulf (`internal/pkg/util/util.go`, `FindFilterFiles`) applies each line of the image's
//! `/etc/warewulf/excludes` like this:
//!
//! 1. the pattern is trimmed of `/` at both ends (`strings.Trim(pattern, "/")`), so `/boot/*`
//!    becomes `boot/*`;
//! 2. it is matched with Go's `filepath.Match` against the entry's path *relative to the image
//!    root*, without a leading `./` or `/` (`boot/vmlinuz`, `usr/share/GeoIP/GeoIP.dat`);
//! 3. a matching directory is pruned (`filepath.SkipDir`): neither it nor anything below it is
//!    archived. A matching non-directory is left out.
//!
//! `filepath.Match` matches the *whole* path: `*` is any run of characters except `/`, `?` one
//! character except `/`, `[a-z]` / `[^a-z]` a character class (Go writes negation with `^`, not
//! `!`; a class may match `/`), and `\x` the literal `x`. There is no `**`. Hence `/boot/*`
//! keeps the `boot` directory itself but drops everything in it, and `*.pyc` only matches at the
//! top level.
//!
//! We port the algorithm rather than translate it to a regex so that the corner cases (a star
//! never crosses `/`, leftmost matching of each star-separated chunk) behave as in Go. One
//! deliberate difference: Go's `Match` reports a malformed pattern only when it gets that far,
//! and Warewulf ignores the error (the pattern silently never matches). We validate every
//! pattern up front and refuse to build with a malformed one, naming it.

use super::BuildError;

/// One character matcher of a chunk: each consumes exactly one character of the name.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Tok {
    /// A literal character (possibly written escaped as `\c`).
    Lit(char),
    /// `?`: any one character except `/`.
    Any,
    /// `[...]` / `[^...]`: inclusive ranges; a single character `c` is the range `c-c`.
    Class { negated: bool, ranges: Vec<(char, char)> },
}

impl Tok {
    fn matches(&self, c: char) -> bool {
        match self {
            Tok::Lit(l) => *l == c,
            Tok::Any => c != '/',
            // Go does not test for the separator inside a class: `[/]` matches `/`.
            Tok::Class { negated, ranges } => ranges.iter().any(|&(lo, hi)| lo <= c && c <= hi) != *negated,
        }
    }
}

/// A `*`-prefixed (or not) run of single-character matchers, as Go's `scanChunk` splits them.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Chunk {
    star: bool,
    toks: Vec<Tok>,
}

/// A validated Go `filepath.Match` pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern {
    source: String,
    chunks: Vec<Chunk>,
}

impl Pattern {
    /// Compiles `pattern` (already trimmed of `/`). Returns why it is malformed on error.
    pub fn compile(pattern: &str) -> Result<Self, &'static str> {
        let chars: Vec<char> = pattern.chars().collect();
        let mut chunks = Vec::new();
        let mut i = 0;
        while i < chars.len() {
            let mut star = false;
            while i < chars.len() && chars[i] == '*' {
                star = true;
                i += 1;
            }
            let mut toks = Vec::new();
            while i < chars.len() && chars[i] != '*' {
                match chars[i] {
                    '?' => {
                        toks.push(Tok::Any);
                        i += 1;
                    }
                    '\\' => {
                        let c = *chars.get(i + 1).ok_or("it ends with a lone backslash")?;
                        toks.push(Tok::Lit(c));
                        i += 2;
                    }
                    '[' => {
                        let (tok, next) = parse_class(&chars, i + 1)?;
                        toks.push(tok);
                        i = next;
                    }
                    c => {
                        toks.push(Tok::Lit(c));
                        i += 1;
                    }
                }
            }
            chunks.push(Chunk { star, toks });
        }
        Ok(Pattern {
            source: pattern.to_owned(),
            chunks,
        })
    }

    /// The pattern text as compiled.
    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// Whether the whole of `name` (a relative path with `/` separators) matches.
    pub fn matches(&self, name: &[char]) -> bool {
        let mut name = name;
        let n = self.chunks.len();
        'chunks: for (idx, chunk) in self.chunks.iter().enumerate() {
            let last = idx + 1 == n;
            if chunk.star && chunk.toks.is_empty() {
                // A trailing star matches the rest of the name unless it holds a separator.
                return !name.contains(&'/');
            }
            if let Some(rest) = match_chunk(&chunk.toks, name) {
                // The last chunk must exhaust the name; otherwise a star may still help.
                if rest.is_empty() || !last {
                    name = rest;
                    continue;
                }
            }
            if chunk.star {
                // Let the star swallow 1, 2, … characters, never a separator.
                for i in 0..name.len() {
                    if name[i] == '/' {
                        break;
                    }
                    if let Some(rest) = match_chunk(&chunk.toks, &name[i + 1..]) {
                        if last && !rest.is_empty() {
                            continue;
                        }
                        name = rest;
                        continue 'chunks;
                    }
                }
            }
            return false;
        }
        name.is_empty()
    }
}

/// Parses a class body starting just after `[`; returns the token and the index after `]`.
fn parse_class(chars: &[char], mut i: usize) -> Result<(Tok, usize), &'static str> {
    const UNCLOSED: &str = "a character class `[` is not closed by `]`";
    let mut negated = false;
    if chars.get(i) == Some(&'^') {
        negated = true;
        i += 1;
    }
    let mut ranges = Vec::new();
    loop {
        match chars.get(i) {
            None => return Err(UNCLOSED),
            Some(']') if !ranges.is_empty() => return Ok((Tok::Class { negated, ranges }, i + 1)),
            _ => {}
        }
        let (lo, next) = class_char(chars, i)?;
        i = next;
        let mut hi = lo;
        if chars.get(i) == Some(&'-') {
            let (h, next) = class_char(chars, i + 1)?;
            hi = h;
            i = next;
        }
        ranges.push((lo, hi));
    }
}

/// Go's `getEsc`: one (possibly escaped) class character; `-` and `]` may not appear bare here,
/// and the class must continue after it.
fn class_char(chars: &[char], mut i: usize) -> Result<(char, usize), &'static str> {
    match chars.get(i) {
        None => return Err("a character class `[` is not closed by `]`"),
        Some('-') => return Err("a character class has a range with a missing bound (escape `-` as `\\-`)"),
        Some(']') => return Err("a character class is empty or has a range with a missing bound"),
        Some('\\') => i += 1,
        Some(_) => {}
    }
    let c = *chars.get(i).ok_or("a character class `[` is not closed by `]`")?;
    if i + 1 >= chars.len() {
        return Err("a character class `[` is not closed by `]`");
    }
    Ok((c, i + 1))
}

/// Matches the fixed-length chunk at the start of `s`; returns the remainder.
fn match_chunk<'a>(toks: &[Tok], s: &'a [char]) -> Option<&'a [char]> {
    if s.len() < toks.len() {
        return None;
    }
    toks.iter().zip(s).all(|(t, &c)| t.matches(c)).then(|| &s[toks.len()..])
}

/// The compiled exclude list of one build, with Warewulf's normalisation applied.
#[derive(Debug, Clone, Default)]
pub struct ExcludeSet {
    patterns: Vec<Pattern>,
}

impl ExcludeSet {
    /// Normalises (`/` trimmed at both ends, like Warewulf) and compiles every pattern;
    /// a malformed one is a [`BuildError::BadExclude`] naming it.
    pub fn compile<S: AsRef<str>>(patterns: &[S]) -> Result<Self, BuildError> {
        let patterns = patterns
            .iter()
            .map(|p| {
                let p = p.as_ref();
                Pattern::compile(normalize(p)).map_err(|reason| BuildError::BadExclude {
                    pattern: p.to_owned(),
                    reason,
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(ExcludeSet { patterns })
    }

    /// Whether nothing can be excluded (saves converting every name).
    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }

    /// The first pattern matching `rel` (a root-relative path, `/`-separated, no leading `./`).
    pub fn matching(&self, rel: &str) -> Option<&Pattern> {
        if self.patterns.is_empty() {
            return None;
        }
        let name: Vec<char> = rel.chars().collect();
        self.patterns.iter().find(|p| p.matches(&name))
    }
}

/// Warewulf's normalisation: `strings.Trim(pattern, "/")`.
pub(super) fn normalize(pattern: &str) -> &str {
    pattern.trim_matches('/')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(pattern: &str, name: &str) -> bool {
        let p = Pattern::compile(pattern).unwrap_or_else(|e| panic!("{pattern}: {e}"));
        p.matches(&name.chars().collect::<Vec<_>>())
    }

    /// Cases from Go's `path/filepath` `matchTests` table (non-Windows), plus Warewulf's own
    /// example patterns.
    #[test]
    fn go_filepath_match_table() {
        let cases: &[(&str, &str, bool)] = &[
            ("abc", "abc", true),
            ("*", "abc", true),
            ("*c", "abc", true),
            ("a*", "a", true),
            ("a*", "abc", true),
            ("a*", "ab/c", false),
            ("a*/b", "abc/b", true),
            ("a*/b", "a/c/b", false),
            ("a*b*c*d*e*/f", "axbxcxdxe/f", true),
            ("a*b*c*d*e*/f", "axbxcxdxexxx/f", true),
            ("a*b*c*d*e*/f", "axbxcxdxe/xxx/f", false),
            ("a*b*c*d*e*/f", "axbxcxdxexxx/fff", false),
            ("a*b?c*x", "abxbbxdbxebxczzx", true),
            ("a*b?c*x", "abxbbxdbxebxczzy", false),
            ("ab[c]", "abc", true),
            ("ab[b-d]", "abc", true),
            ("ab[e-g]", "abc", false),
            ("ab[^c]", "abc", false),
            ("ab[^b-d]", "abc", false),
            ("ab[^e-g]", "abc", true),
            ("a\\*b", "a*b", true),
            ("a\\*b", "ab", false),
            ("a?b", "a☺b", true),
            ("a[^a]b", "a☺b", true),
            ("a???b", "a☺b", false),
            ("a[^a][^a][^a]b", "a☺b", false),
            ("[a-ζ]*", "α", true),
            ("*[a-ζ]", "A", false),
            ("a?b", "a/b", false),
            ("a*b", "a/b", false),
            ("[\\]a]", "]", true),
            ("[\\-]", "-", true),
            ("[x\\-]", "x", true),
            ("[x\\-]", "-", true),
            ("[x\\-]", "z", false),
            ("[\\-x]", "x", true),
            ("[\\-x]", "-", true),
            ("[\\-x]", "a", false),
            ("*x", "xxx", true),
            // A class does not exclude the separator (Go quirk kept on purpose).
            ("a[/]b", "a/b", true),
            // Warewulf's examples, after trimming the slashes.
            ("boot/*", "boot/vmlinuz-6.1", true),
            ("boot/*", "boot/grub", true),
            ("boot/*", "boot", false),
            ("boot/*", "boot/grub/grub.cfg", false),
            ("usr/share/GeoIP/*", "usr/share/GeoIP/GeoIP.dat", true),
            ("*.pyc", "a.pyc", true),
            ("*.pyc", "lib/a.pyc", false),
        ];
        for &(pattern, name, want) in cases {
            assert_eq!(m(pattern, name), want, "Match({pattern:?}, {name:?})");
        }
    }

    #[test]
    fn malformed_patterns_are_rejected() {
        for bad in [
            "[", "[^", "[]a]", "[-]", "[x-]", "[-x]", "a\\", "[\\", "[a", "[a-", "[^]", "x[a-b",
        ] {
            assert!(Pattern::compile(bad).is_err(), "{bad:?} should be malformed");
        }
        // Unlike POSIX globs, Go has no `[]...]` form: `]` first in a class is an error.
        assert!(Pattern::compile("[]]").is_err());
        assert!(Pattern::compile("[\\]]").is_ok());
    }

    #[test]
    fn exclude_set_trims_slashes_and_reports_bad_pattern() {
        let set = ExcludeSet::compile(&["/boot/*/", "/usr/share/GeoIP/*"]).unwrap();
        assert_eq!(set.matching("boot/x").map(Pattern::as_str), Some("boot/*"));
        assert!(set.matching("boot").is_none());
        assert!(set.matching("usr/share/GeoIP").is_none());
        assert!(set.matching("usr/share/GeoIP/a.dat").is_some());
        match ExcludeSet::compile(&["ok", "/bad[/"]).unwrap_err() {
            BuildError::BadExclude { pattern, reason } => {
                assert_eq!(pattern, "/bad[/");
                assert!(reason.contains("not closed"), "{reason}");
            }
            other => panic!("wrong error: {other}"),
        }
        // "/" trims to "" which never matches a (non-empty) relative path.
        assert!(ExcludeSet::compile(&["/"]).unwrap().matching("x").is_none());
    }
}
