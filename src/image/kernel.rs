//! Finding the kernel a node boots inside an image root, the way Warewulf v4.6 does.
//!
//! Warewulf 4.6 (`internal/pkg/kernel/kernel.go`) globs, in this order:
//! `/boot/Image-*` (arm64 SUSE; the `vmlinux-*` beside it does not boot, so `vmlinux` is *not* searched),
//! `/boot/vmlinuz-linux*` (Arch; a subset of the next one), `/boot/vmlinuz-*`, `/lib/modules/*/vmlinuz` and
//! `/lib/modules/*/vmlinuz.gz` (EL and Arch ship the kernel there; `/boot` is often empty in container-built
//! images). Its version is `util.ParseVersion(path)`: the *last* match of `\d+\.\d+\.\d+(-[\d\.]+|)` in the path
//! that parses as a hashicorp/go-version (trailing `.` trimmed), so `/lib/modules/5.14.0-427.24.1.el9_4.x86_64/
//! vmlinuz` has version `5.14.0-427.24.1` and `/boot/vmlinuz-6.1.0-13-amd64` has `6.1.0-13`. Kernels sort by that
//! version with go-version semantics (numeric segments, then a release *without* pre-release part ranks above one
//! with it, then pre-release parts compared numerically), versionless kernels lowest. The default kernel is the
//! newest whose path contains neither `+debug` nor `-rescue`. A pinned `--kernelversion` is either a path in the
//! image (used if it is a file) or a version prefix, debug/rescue kernels skipped. We reproduce all of that
//! ([`ww_version`], [`WwVersion`]) so a wulfpack cluster boots the same kernel a Warewulf one would.
//!
//! Deliberate differences, each to make the choice deterministic or safer:
//! - Warewulf lists `/boot/vmlinuz-X` and `/lib/modules/X/vmlinuz` separately; we keep one kernel per release
//!   (`X`, the name on disk), the first in search order (so `/boot` wins, as in Warewulf's own docs example),
//!   and one per real file. Ties in version sort by release (natural order) then path, instead of Go's
//!   unstable sort.
//! - A pinned version matches exactly (release or version) before it matches as a prefix, and a prefix must end
//!   at a component boundary (`6.1.0-1` does not select `6.1.0-13`); among matches the newest wins rather than
//!   the first in glob order. Naming a debug/rescue kernel by its exact release or path selects it.
//! - The image root is untrusted content: symlinks (`/boot/vmlinuz-X -> /usr/lib/...`, merged-/usr
//!   `lib -> usr/lib`) are resolved *inside the root* (absolute targets from the root, `..` clamped there),
//!   never through the host. [`KernelInfo::path`] is that resolved path, free of symlinks, so reading
//!   `root.join(path)` cannot leave the image.

use std::cmp::Ordering;
use std::collections::{HashSet, VecDeque};
use std::ffi::OsString;
use std::fs;
use std::io;
use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};

/// How many symlinks one lookup may traverse, as Linux's MAXSYMLINKS.
const MAX_SYMLINKS: usize = 40;

/// A kernel found in an image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KernelInfo {
    /// The kernel image, relative to the root, with every symlink resolved inside the root
    /// (e.g. `boot/vmlinuz-6.1.0-13-amd64`, `usr/lib/modules/5.14.0-427.el9.x86_64/vmlinuz`).
    pub path: PathBuf,
    /// Warewulf's version string (`6.1.0-13`, `5.14.0-427.24.1`); empty when the name carries none
    /// (`vmlinuz-linux`, rescue kernels).
    pub version: String,
    /// The release as named on disk, i.e. `uname -r` (`6.1.0-13-amd64`, `5.14.0-427.el9.x86_64`).
    pub release: String,
    /// The path the kernel was found under, as Warewulf reports it (`/lib/modules/X/vmlinuz`).
    pub found_as: String,
}

impl KernelInfo {
    /// A debug kernel (`+debug` in its path), never chosen by default.
    pub fn is_debug(&self) -> bool {
        self.found_as.contains("+debug")
    }

    /// A rescue kernel (`-rescue` in its path), never chosen by default.
    pub fn is_rescue(&self) -> bool {
        self.found_as.contains("-rescue")
    }

    fn bootable_by_default(&self) -> bool {
        !self.is_debug() && !self.is_rescue()
    }
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KernelError {
    #[error(
        "cannot read {} while looking for kernels in image {}: {source}; check the image root's permissions",
        path.display(), root.display()
    )]
    Io {
        root: PathBuf,
        path: PathBuf,
        source: io::Error,
    },

    #[error(
        "kernel {pinned:?} is pinned, but image {} has no such kernel (found: {}); set the node's kernel version to \
         one of these (a version such as 5.14.0-427.24.1, a release such as 5.14.0-427.24.1.el9_4.x86_64, or a path \
         such as /boot/vmlinuz-…), clear it to boot the newest, or install that kernel in the image",
        root.display(), if found.is_empty() { "no kernels at all".to_owned() } else { found.join(", ") }
    )]
    PinnedNotFound {
        pinned: String,
        root: PathBuf,
        found: Vec<String>,
    },
}

/// Every bootable kernel found, newest first; debug and rescue kernels excluded (see [`list_all_kernels`]).
pub fn list_kernels(root: &Path) -> Result<Vec<KernelInfo>, KernelError> {
    let mut all = list_all_kernels(root)?;
    all.retain(KernelInfo::bootable_by_default);
    Ok(all)
}

/// Every kernel found, newest first, debug and rescue kernels included (what `wwctl image kernels` shows).
pub fn list_all_kernels(root: &Path) -> Result<Vec<KernelInfo>, KernelError> {
    let io_err = |path: &Path, source| KernelError::Io {
        root: root.to_path_buf(),
        path: root.join(path),
        source,
    };
    // (kernel, parsed version, position in Warewulf's search order)
    let mut found: Vec<(KernelInfo, Option<WwVersion>, usize)> = Vec::new();
    let mut consider = |found_as: String, release: String, at: PathBuf| -> Result<(), KernelError> {
        let Some(real) = resolve_in_root(root, &at).map_err(|e| io_err(&at, e))? else {
            return Ok(());
        };
        match fs::symlink_metadata(root.join(&real)) {
            Ok(md) if md.is_file() => {}
            _ => return Ok(()),
        }
        let version = ww_version(&found_as);
        let info = KernelInfo {
            path: real,
            version: version.as_ref().map(ToString::to_string).unwrap_or_default(),
            release,
            found_as,
        };
        let order = found.len();
        found.push((info, version, order));
        Ok(())
    };

    let boot = list_dir(root, Path::new("boot")).map_err(|e| io_err(Path::new("boot"), e))?;
    for (prefix, strip_gz) in [("Image-", false), ("vmlinuz-", true)] {
        for (name, real_dir) in &boot {
            let Some(rest) = name.strip_prefix(prefix) else {
                continue;
            };
            let release = if strip_gz {
                rest.strip_suffix(".gz").unwrap_or(rest)
            } else {
                rest
            };
            consider(format!("/boot/{name}"), release.to_owned(), real_dir.join(name))?;
        }
    }
    let modules = list_dir(root, Path::new("lib/modules")).map_err(|e| io_err(Path::new("lib/modules"), e))?;
    for file in ["vmlinuz", "vmlinuz.gz"] {
        for (name, real_dir) in &modules {
            consider(
                format!("/lib/modules/{name}/{file}"),
                name.clone(),
                real_dir.join(name).join(file),
            )?;
        }
    }

    // Newest first (Warewulf's order; versionless lowest), then release in natural order, then search order.
    found.sort_by(|(ka, va, oa), (kb, vb, ob)| {
        vb.cmp(va)
            .then_with(|| natural_cmp(&kb.release, &ka.release))
            .then_with(|| oa.cmp(ob))
    });
    // One kernel per release and per real file: the first after sorting, i.e. the one with the best version
    // (`vmlinuz-linux` loses to the `lib/modules/6.6.1-arch1-1/vmlinuz` it is a copy of), `/boot` on ties.
    let mut releases = HashSet::new();
    let mut files = HashSet::new();
    Ok(found
        .into_iter()
        .map(|(k, _, _)| k)
        .filter(|k| {
            let keep = !releases.contains(&k.release) && !files.contains(&k.path);
            if keep {
                releases.insert(k.release.clone());
                files.insert(k.path.clone());
            }
            keep
        })
        .collect())
}

/// The kernel a node boots: the `pinned` one if given (a version, a release, or a path inside the image),
/// else the newest that is neither debug nor rescue. `Ok(None)` when nothing is pinned and there is no kernel.
pub fn find_kernel(root: &Path, pinned: Option<&str>) -> Result<Option<KernelInfo>, KernelError> {
    let all = list_all_kernels(root)?;
    let Some(pin) = pinned.map(str::trim).filter(|p| !p.is_empty()) else {
        return Ok(all.into_iter().find(KernelInfo::bootable_by_default));
    };

    // A path in the image (Warewulf: `--kernelversion=/boot/vmlinuz-…`).
    if pin.contains('/') {
        let rel = PathBuf::from(pin.trim_start_matches('/'));
        let real = resolve_in_root(root, &rel).map_err(|e| KernelError::Io {
            root: root.to_path_buf(),
            path: root.join(&rel),
            source: e,
        })?;
        if let Some(real) = real.filter(|r| fs::symlink_metadata(root.join(r)).map(|m| m.is_file()).unwrap_or(false)) {
            if let Some(k) = all.iter().find(|k| k.path == real) {
                return Ok(Some(k.clone()));
            }
            let found_as = format!("/{}", rel.display());
            return Ok(Some(KernelInfo {
                version: ww_version(&found_as).map(|v| v.to_string()).unwrap_or_default(),
                release: release_from_path(&rel),
                path: real,
                found_as,
            }));
        }
    }

    let by_default = || all.iter().filter(|k| k.bootable_by_default());
    let chosen = all
        .iter()
        .find(|k| k.release == pin)
        .or_else(|| by_default().find(|k| k.version == pin))
        .or_else(|| by_default().find(|k| prefix_at_boundary(&k.version, pin) || prefix_at_boundary(&k.release, pin)));
    match chosen {
        Some(k) => Ok(Some(k.clone())),
        None => Err(KernelError::PinnedNotFound {
            pinned: pin.to_owned(),
            root: root.to_path_buf(),
            found: all
                .iter()
                .map(|k| format!("{} ({})", display_version(k), k.found_as))
                .collect(),
        }),
    }
}

fn display_version(k: &KernelInfo) -> &str {
    if k.version.is_empty() {
        &k.release
    } else {
        &k.version
    }
}

/// `pin` is a prefix of `s` that does not cut a number in two.
fn prefix_at_boundary(s: &str, pin: &str) -> bool {
    s.strip_prefix(pin).is_some_and(|rest| {
        !pin.ends_with(|c: char| c.is_ascii_digit()) || !rest.starts_with(|c: char| c.is_ascii_digit())
    })
}

/// What a pinned path that is not in the search patterns calls its release.
fn release_from_path(rel: &Path) -> String {
    let name = rel
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    if name == "vmlinuz" || name == "vmlinuz.gz" {
        if let Some(dir) = rel.parent().and_then(Path::file_name) {
            return dir.to_string_lossy().into_owned();
        }
    }
    for prefix in ["vmlinuz-", "Image-"] {
        if let Some(rest) = name.strip_prefix(prefix) {
            return rest.strip_suffix(".gz").unwrap_or(rest).to_owned();
        }
    }
    name
}

/// Entries of the directory `rel` (resolved inside the root), sorted by name, each with the directory's real
/// path. A missing directory (or a non-directory) yields nothing.
fn list_dir(root: &Path, rel: &Path) -> io::Result<Vec<(String, PathBuf)>> {
    let Some(real) = resolve_in_root(root, rel)? else {
        return Ok(Vec::new());
    };
    let entries = match fs::read_dir(root.join(&real)) {
        Ok(e) => e,
        Err(e) if matches!(e.kind(), io::ErrorKind::NotFound | io::ErrorKind::NotADirectory) => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut names = Vec::new();
    for entry in entries {
        // Kernel names are ASCII; a name that is not UTF-8 cannot be one.
        if let Ok(name) = entry?.file_name().into_string() {
            names.push((name, real.clone()));
        }
    }
    names.sort();
    Ok(names)
}

/// Resolve `rel` inside `root` like a chroot would: symlinks followed with absolute targets taken from the
/// root and `..` clamped at the root. Returns the symlink-free relative path, or `None` if it does not exist
/// (dangling link, missing component, a loop, or more than 40 links, like Linux).
pub fn resolve_in_root(root: &Path, rel: &Path) -> io::Result<Option<PathBuf>> {
    let mut todo: VecDeque<OsString> = VecDeque::new();
    push_components(&mut todo, rel, false);
    let mut done = PathBuf::new();
    let mut links = 0;
    while let Some(comp) = todo.pop_front() {
        if comp == ".." {
            done.pop();
            continue;
        }
        let candidate = done.join(&comp);
        // `done` holds only real directories, so this lstat cannot be redirected outside the root.
        let md = match fs::symlink_metadata(root.join(&candidate)) {
            Ok(md) => md,
            Err(e) if matches!(e.kind(), io::ErrorKind::NotFound | io::ErrorKind::NotADirectory) => return Ok(None),
            Err(e) => return Err(e),
        };
        if md.file_type().is_symlink() {
            links += 1;
            if links > MAX_SYMLINKS {
                return Ok(None);
            }
            let target = fs::read_link(root.join(&candidate))?;
            if target.is_absolute() {
                done = PathBuf::new();
            }
            push_components(&mut todo, &target, true);
        } else {
            if !todo.is_empty() && !md.is_dir() {
                return Ok(None);
            }
            done = candidate;
        }
    }
    Ok(Some(done))
}

/// Queue `path`'s components (`.`, `/` dropped, `..` kept), at the front when `front`.
fn push_components(todo: &mut VecDeque<OsString>, path: &Path, front: bool) {
    let comps: Vec<OsString> = path
        .components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.to_os_string()),
            Component::ParentDir => Some(OsString::from("..")),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => None,
        })
        .collect();
    if front {
        for c in comps.into_iter().rev() {
            todo.push_front(c);
        }
    } else {
        todo.extend(comps);
    }
}

/// A version as hashicorp/go-version understands the strings Warewulf's regex extracts:
/// three numeric segments and an optional pre-release of dot-separated parts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WwVersion {
    segments: [i64; 3],
    pre: Option<String>,
}

impl std::fmt::Display for WwVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let [a, b, c] = self.segments;
        write!(f, "{a}.{b}.{c}")?;
        if let Some(pre) = &self.pre {
            write!(f, "-{pre}")?;
        }
        Ok(())
    }
}

impl Ord for WwVersion {
    fn cmp(&self, other: &Self) -> Ordering {
        self.segments
            .cmp(&other.segments)
            .then_with(|| match (&self.pre, &other.pre) {
                (None, None) => Ordering::Equal,
                (None, Some(_)) => Ordering::Greater,
                (Some(_), None) => Ordering::Less,
                (Some(a), Some(b)) => compare_prereleases(a, b),
            })
    }
}

impl PartialOrd for WwVersion {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// go-version's `comparePrereleases`.
fn compare_prereleases(a: &str, b: &str) -> Ordering {
    if a == b {
        return Ordering::Equal;
    }
    let pa: Vec<&str> = a.split('.').collect();
    let pb: Vec<&str> = b.split('.').collect();
    for i in 0..pa.len().max(pb.len()) {
        let c = compare_part(pa.get(i).copied().unwrap_or(""), pb.get(i).copied().unwrap_or(""));
        if c != Ordering::Equal {
            return c;
        }
    }
    Ordering::Equal
}

/// go-version's `comparePart`, quirks included.
fn compare_part(a: &str, b: &str) -> Ordering {
    if a == b {
        return Ordering::Equal;
    }
    let na = a.parse::<i64>().ok();
    let nb = b.parse::<i64>().ok();
    if a.is_empty() {
        return if nb.is_some() {
            Ordering::Less
        } else {
            Ordering::Greater
        };
    }
    if b.is_empty() {
        return if na.is_some() {
            Ordering::Greater
        } else {
            Ordering::Less
        };
    }
    match (na, nb) {
        (Some(_), None) => Ordering::Less,
        (None, Some(_)) => Ordering::Greater,
        (None, None) if a > b => Ordering::Greater,
        (Some(x), Some(y)) if x > y => Ordering::Greater,
        _ => Ordering::Less,
    }
}

/// Warewulf's `util.ParseVersion`: the last match of `\d+\.\d+\.\d+(-[\d\.]+|)` in `s` that is a valid
/// version once one trailing `.` is trimmed.
pub fn ww_version(s: &str) -> Option<WwVersion> {
    version_matches(s.as_bytes())
        .into_iter()
        .rev()
        .find_map(|m| parse_version(m.strip_suffix('.').unwrap_or(m)))
}

/// All non-overlapping, leftmost-first matches of `\d+\.\d+\.\d+(-[\d\.]+|)`.
fn version_matches(s: &[u8]) -> Vec<&str> {
    let digits = |mut i: usize| {
        let start = i;
        while i < s.len() && s[i].is_ascii_digit() {
            i += 1;
        }
        (i > start).then_some(i)
    };
    let dot_digits = |i: usize| if s.get(i) == Some(&b'.') { digits(i + 1) } else { None };
    let mut out = Vec::new();
    let mut i = 0;
    while i < s.len() {
        let end = digits(i).and_then(dot_digits).and_then(dot_digits).map(|mut end| {
            if s.get(end) == Some(&b'-') && s.get(end + 1).is_some_and(|c| c.is_ascii_digit() || *c == b'.') {
                end += 1;
                while end < s.len() && (s[end].is_ascii_digit() || s[end] == b'.') {
                    end += 1;
                }
            }
            end
        });
        match end {
            Some(end) => {
                // Only ASCII digits, dots and a dash were matched, so this slice is valid UTF-8.
                out.push(std::str::from_utf8(&s[i..end]).unwrap_or_default());
                i = end;
            }
            None => i += 1,
        }
    }
    out
}

/// go-version's parser, restricted to what the regex can produce: `X.Y.Z` or `X.Y.Z-P(.P)*` with P digits.
fn parse_version(s: &str) -> Option<WwVersion> {
    let (core, pre) = match s.split_once('-') {
        Some((core, pre)) => (core, Some(pre)),
        None => (s, None),
    };
    let mut segments = [0i64; 3];
    let mut parts = core.split('.');
    for seg in &mut segments {
        *seg = parts.next()?.parse().ok()?;
    }
    if parts.next().is_some() {
        return None;
    }
    if let Some(pre) = pre {
        if pre.split('.').any(str::is_empty) {
            return None;
        }
    }
    Some(WwVersion {
        segments,
        pre: pre.map(str::to_owned),
    })
}

/// Natural order: digit runs compare as numbers, everything else bytewise.
fn natural_cmp(a: &str, b: &str) -> Ordering {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let (mut i, mut j) = (0, 0);
    while i < a.len() && j < b.len() {
        if a[i].is_ascii_digit() && b[j].is_ascii_digit() {
            let (si, sj) = (i, j);
            while i < a.len() && a[i].is_ascii_digit() {
                i += 1;
            }
            while j < b.len() && b[j].is_ascii_digit() {
                j += 1;
            }
            let na = trim_zeros(&a[si..i]);
            let nb = trim_zeros(&b[sj..j]);
            let c = na.len().cmp(&nb.len()).then_with(|| na.cmp(nb));
            if c != Ordering::Equal {
                return c;
            }
        } else {
            if a[i] != b[j] {
                return a[i].cmp(&b[j]);
            }
            i += 1;
            j += 1;
        }
    }
    (a.len() - i).cmp(&(b.len() - j))
}

fn trim_zeros(d: &[u8]) -> &[u8] {
    let first = d.iter().position(|c| *c != b'0').unwrap_or(d.len());
    &d[first..]
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn image(files: &[&str]) -> tempfile::TempDir {
        let tmp = tempfile::tempdir().unwrap();
        for f in files {
            let p = tmp.path().join(f.trim_start_matches('/'));
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(&p, f.as_bytes()).unwrap();
        }
        tmp
    }

    fn paths(ks: &[KernelInfo]) -> Vec<String> {
        ks.iter().map(|k| k.path.display().to_string()).collect()
    }

    #[test]
    fn debian_layout() {
        let img = image(&[
            "boot/vmlinuz-6.1.0-13-amd64",
            "boot/vmlinuz-6.1.0-9-amd64",
            "boot/config-6.1.0-13-amd64",
        ]);
        let root = img.path();
        symlink("vmlinuz-6.1.0-13-amd64", root.join("boot/vmlinuz")).unwrap();
        symlink("boot/vmlinuz-6.1.0-13-amd64", root.join("vmlinuz")).unwrap();

        let ks = list_kernels(root).unwrap();
        assert_eq!(
            paths(&ks),
            ["boot/vmlinuz-6.1.0-13-amd64", "boot/vmlinuz-6.1.0-9-amd64"]
        );
        assert_eq!(ks[0].version, "6.1.0-13");
        assert_eq!(ks[0].release, "6.1.0-13-amd64");

        let k = find_kernel(root, None).unwrap().unwrap();
        assert_eq!(
            (k.path.to_str().unwrap(), k.version.as_str()),
            ("boot/vmlinuz-6.1.0-13-amd64", "6.1.0-13")
        );
        for pin in [
            "6.1.0-9",
            "6.1.0-9-amd64",
            "/boot/vmlinuz-6.1.0-9-amd64",
            "boot/vmlinuz-6.1.0-9-amd64",
            "6.1.0",
        ] {
            let want = if pin == "6.1.0" {
                "6.1.0-13-amd64"
            } else {
                "6.1.0-9-amd64"
            };
            assert_eq!(
                find_kernel(root, Some(pin)).unwrap().unwrap().release,
                want,
                "pin {pin}"
            );
        }
        // The /boot/vmlinuz symlink, pinned by path, resolves to the real file inside the image.
        let k = find_kernel(root, Some("/boot/vmlinuz")).unwrap().unwrap();
        assert_eq!(k.path, Path::new("boot/vmlinuz-6.1.0-13-amd64"));

        // "6.1.0-1" must not silently pick 6.1.0-13.
        let err = find_kernel(root, Some("6.1.0-1")).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, KernelError::PinnedNotFound { .. }));
        assert!(
            msg.contains("\"6.1.0-1\"") && msg.contains("6.1.0-13") && msg.contains("6.1.0-9"),
            "{msg}"
        );
    }

    #[test]
    fn el_layout() {
        let img = image(&[
            "lib/modules/5.14.0-427.el9.x86_64/vmlinuz",
            "lib/modules/5.14.0-362.el9.x86_64/vmlinuz",
            "lib/modules/5.14.0-503.el9.x86_64+debug/vmlinuz",
            "boot/vmlinuz-0-rescue-abc",
            "boot/vmlinuz-5.14.0-427.el9.x86_64", // the copy kernel-install puts in /boot
        ]);
        let root = img.path();
        let all = list_all_kernels(root).unwrap();
        assert_eq!(
            paths(&all),
            [
                "lib/modules/5.14.0-503.el9.x86_64+debug/vmlinuz",
                "boot/vmlinuz-5.14.0-427.el9.x86_64",
                "lib/modules/5.14.0-362.el9.x86_64/vmlinuz",
                "boot/vmlinuz-0-rescue-abc",
            ],
            "deduplicated by release, /boot first, newest first, versionless last"
        );
        assert!(all[0].is_debug() && all[3].is_rescue());
        let ks = list_kernels(root).unwrap();
        assert_eq!(
            ks.iter().map(|k| k.version.as_str()).collect::<Vec<_>>(),
            ["5.14.0-427", "5.14.0-362"]
        );

        assert_eq!(
            find_kernel(root, None).unwrap().unwrap().release,
            "5.14.0-427.el9.x86_64"
        );
        assert_eq!(
            find_kernel(root, Some("5.14.0-362")).unwrap().unwrap().release,
            "5.14.0-362.el9.x86_64"
        );
        let by_path = find_kernel(root, Some("/lib/modules/5.14.0-362.el9.x86_64/vmlinuz"))
            .unwrap()
            .unwrap();
        assert_eq!(by_path.release, "5.14.0-362.el9.x86_64");
        // Prefix and version matches skip debug kernels; the exact release selects one.
        assert!(matches!(
            find_kernel(root, Some("5.14.0-503")),
            Err(KernelError::PinnedNotFound { .. })
        ));
        assert!(find_kernel(root, Some("5.14.0-503.el9.x86_64+debug"))
            .unwrap()
            .unwrap()
            .is_debug());
        let err = find_kernel(root, Some("6.0")).unwrap_err().to_string();
        assert!(
            err.contains("\"6.0\"") && err.contains("/lib/modules/5.14.0-362.el9.x86_64/vmlinuz"),
            "{err}"
        );
    }

    #[test]
    fn empty_root() {
        let img = image(&[]);
        assert!(list_kernels(img.path()).unwrap().is_empty());
        assert_eq!(find_kernel(img.path(), None).unwrap(), None);
        assert_eq!(
            find_kernel(img.path(), Some("")).unwrap(),
            None,
            "an empty pin means no pin"
        );
        let err = find_kernel(img.path(), Some("6.1.0-13")).unwrap_err().to_string();
        assert!(err.contains("no kernels at all"), "{err}");
        // Only debug/rescue kernels: nothing to boot by default.
        let img = image(&["boot/vmlinuz-0-rescue-abc", "boot/vmlinuz-6.1.0-1+debug"]);
        assert_eq!(find_kernel(img.path(), None).unwrap(), None);
    }

    #[test]
    fn symlinks_resolve_inside_the_root_only() {
        let outside = tempfile::tempdir().unwrap();
        fs::write(outside.path().join("vmlinuz-9.9.9"), b"host kernel").unwrap();
        let img = image(&["usr/lib/modules/6.6.1-arch1-1/vmlinuz", "boot/real"]);
        let root = img.path();
        symlink("usr/lib", root.join("lib")).unwrap(); // merged /usr
        fs::create_dir_all(root.join("boot")).unwrap();
        symlink(
            "/usr/lib/modules/6.6.1-arch1-1/vmlinuz",
            root.join("boot/vmlinuz-linux"),
        )
        .unwrap();
        // Points at a host file: resolved inside the root it does not exist, so it is no kernel.
        symlink(outside.path().join("vmlinuz-9.9.9"), root.join("boot/vmlinuz-9.9.9")).unwrap();
        symlink("../../../../../../../../../../../..", root.join("boot/vmlinuz-8.8.8")).unwrap();
        symlink("vmlinuz-loop", root.join("boot/vmlinuz-loop")).unwrap();
        symlink("../../boot/./real", root.join("boot/vmlinuz-7.7.7")).unwrap();

        let all = list_all_kernels(root).unwrap();
        assert_eq!(paths(&all), ["boot/real", "usr/lib/modules/6.6.1-arch1-1/vmlinuz"]);
        assert_eq!(all[0].version, "7.7.7");
        // vmlinuz-linux is the very file lib/modules/6.6.1-arch1-1/vmlinuz: kept once, under the name with a version.
        assert_eq!(
            (all[1].release.as_str(), all[1].version.as_str()),
            ("6.6.1-arch1-1", "6.6.1")
        );
        assert!(find_kernel(root, Some("/boot/vmlinuz-9.9.9")).is_err());
    }

    /// Warewulf 4.6's own table (`internal/pkg/kernel/kernel_test.go`): same default, same version.
    #[test]
    fn warewulf_default_kernel_table() {
        let cases: &[(&[&str], &str, &str)] = &[
            (
                &[
                    "/boot/vmlinuz-5.14.0-427.18.1.el9_4.x86_64",
                    "/boot/vmlinuz-5.14.0-427.24.1.el9_4.x86_64",
                    "/boot/vmlinuz-4.14.0-427.18.1.el8_4.x86_64",
                ],
                "5.14.0-427.24.1",
                "boot/vmlinuz-5.14.0-427.24.1.el9_4.x86_64",
            ),
            (
                &[
                    "/boot/vmlinuz-5.15.0-119-generic",
                    "/boot/vmlinuz-5.14.0-427.24.1.el9_4.x86_64",
                    "/boot/vmlinuz-6.15.0-119-generic",
                ],
                "6.15.0-119",
                "boot/vmlinuz-6.15.0-119-generic",
            ),
            (
                &[
                    "/boot/vmlinuz-5.15.0-0-vanilla",
                    "/boot/vmlinuz-5.14.0-427.24.1.el9_4.x86_64",
                ],
                "5.15.0-0",
                "boot/vmlinuz-5.15.0-0-vanilla",
            ),
            (
                &[
                    "/boot/vmlinuz-5.15.0-generic",
                    "/boot/vmlinuz-5.14.0-427.24.1.el9_4.x86_64",
                    "/boot/vmlinuz-5.13.0-427.24.1.el9_4.x86_64",
                ],
                "5.15.0",
                "boot/vmlinuz-5.15.0-generic",
            ),
            (
                &[
                    "/lib/modules/5.14.0-427.18.1.el9_4.x86_64/vmlinuz",
                    "/lib/modules/5.14.0-427.24.1.el9_4.x86_64/vmlinuz",
                ],
                "5.14.0-427.24.1",
                "lib/modules/5.14.0-427.24.1.el9_4.x86_64/vmlinuz",
            ),
            (
                &[
                    "/boot/vmlinuz-5.14.0-427.18.1.el9_4.x86_64.gz",
                    "/boot/vmlinuz-5.14.0-427.24.1.el9_4.x86_64.gz",
                ],
                "5.14.0-427.24.1",
                "boot/vmlinuz-5.14.0-427.24.1.el9_4.x86_64.gz",
            ),
            (
                &[
                    "/boot/vmlinuz-0-rescue-eb46964329b146e39518c625feab3ea0",
                    "/boot/vmlinuz-5.14.0-362.24.1.el9_3.aarch64",
                    "/boot/vmlinuz-5.14.0-427.31.1.el9_4.aarch64+debug",
                    "/boot/vmlinuz-5.14.0-284.30.1.el9_2.aarch64",
                    "/boot/vmlinuz-5.14.0-427.31.1.el9_4.aarch64",
                ],
                "5.14.0-427.31.1",
                "boot/vmlinuz-5.14.0-427.31.1.el9_4.aarch64",
            ),
            (
                &[
                    "/boot/Image-6.4.0-150600.23.25-default",
                    "/boot/vmlinux-6.4.0-150600.23.25-default",
                ],
                "6.4.0-150600.23.25",
                "boot/Image-6.4.0-150600.23.25-default",
            ),
        ];
        for (files, version, path) in cases {
            let img = image(files);
            let k = find_kernel(img.path(), None).unwrap().unwrap();
            assert_eq!(
                (k.version.as_str(), k.path.to_str().unwrap()),
                (*version, *path),
                "{files:?}"
            );
            assert_eq!(
                list_all_kernels(img.path()).unwrap().len(),
                files.iter().filter(|f| !f.contains("vmlinux-")).count()
            );
        }
    }

    #[test]
    fn version_parsing_matches_warewulf() {
        let v = |s: &str| ww_version(s).map(|v| v.to_string());
        assert_eq!(v("/boot/vmlinuz-6.1.0-13-amd64").as_deref(), Some("6.1.0-13"));
        assert_eq!(
            v("/lib/modules/5.14.0-427.24.1.el9_4.x86_64/vmlinuz").as_deref(),
            Some("5.14.0-427.24.1")
        );
        assert_eq!(
            v("/lib/modules/5.14.0-427.el9.x86_64/vmlinuz").as_deref(),
            Some("5.14.0-427")
        );
        assert_eq!(v("/boot/vmlinuz-5.15.0-generic").as_deref(), Some("5.15.0"));
        assert_eq!(v("/boot/vmlinuz-0-rescue-eb46964329b146e39518c625feab3ea0"), None);
        assert_eq!(v("/boot/vmlinuz-linux"), None);
        assert_eq!(
            v("/boot/vmlinuz-05.01.0"),
            Some("5.1.0".into()),
            "go-version prints segments as numbers"
        );
        // The last valid match wins; an invalid one ("1.2.3-..") falls back to an earlier match.
        assert_eq!(v("/x/1.2.3/y/4.5.6-7").as_deref(), Some("4.5.6-7"));
        assert_eq!(v("/x/1.2.3/y/4.5.6-..").as_deref(), Some("1.2.3"));
    }

    #[test]
    fn version_ordering_is_natural_and_warewulf_compatible() {
        let v = |s: &str| ww_version(s).unwrap();
        assert!(v("5.14.0-362.el9") < v("5.14.0-427.el9"));
        assert!(v("6.1.0-9") < v("6.1.0-13"));
        assert!(v("5.14.0-427.18.1") < v("5.14.0-427.24.1"));
        assert!(
            v("5.14.0-427") < v("5.14.0-427.1"),
            "a missing part ranks below a numeric one"
        );
        assert!(
            v("5.15.0-119") < v("5.15.0"),
            "no pre-release ranks above any pre-release (go-version)"
        );
        assert!(v("4.18.0-999") < v("5.14.0-1"));
        assert_eq!(natural_cmp("6.1.0-13-amd64", "6.1.0-13-rt-amd64"), Ordering::Less);
        assert_eq!(natural_cmp("a10", "a9"), Ordering::Greater);
        assert_eq!(natural_cmp("a010", "a10"), Ordering::Equal);
    }

    #[test]
    fn prefix_matching_respects_number_boundaries() {
        assert!(prefix_at_boundary("5.14.0-427.24.1", "5.14.0-427"));
        assert!(prefix_at_boundary("5.14.0-427.24.1", "5.14."));
        assert!(!prefix_at_boundary("6.1.0-13", "6.1.0-1"));
        assert!(prefix_at_boundary("6.1.0-13", "6.1.0-13"));
    }
}
