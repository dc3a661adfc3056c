//! What can go wrong applying a layer: [`LayerError`], which names the layer and tar entry, and [`UnsafeEntry`],
//! why an entry was refused as unsafe.

use std::io;
use std::path::PathBuf;

use rustix::io::Errno;

/// Why an entry was refused as unsafe.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum UnsafeEntry {
    #[error("its path is absolute; layer paths must be relative to the image root (\"etc/x\" or \"./etc/x\")")]
    AbsolutePath,
    #[error("its path climbs out of the image root with \"..\"")]
    EscapesRoot,
    #[error(
        "parent {component:?} is a symbolic link; wulfpack never writes through symlinks, since one pointing \
         outside the image would redirect the write to the host"
    )]
    SymlinkParent { component: String },
    #[error("its symlink target {target:?} leads outside the image root")]
    SymlinkEscapes { target: String },
    #[error("its hardlink target {target:?} is outside the image root")]
    HardlinkEscapes { target: String },
    #[error("its hardlink target {target:?} passes through symbolic link {component:?}")]
    HardlinkThroughSymlink { target: String, component: String },
    #[error("it would replace the image root directory with a non-directory")]
    ReplacesRoot,
}

/// Errors from applying a layer. Every variant about layer content names the layer and the tar entry.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LayerError {
    #[error(
        "unsupported layer media type {media_type:?}: wulfpack applies filesystem layers \
         (application/vnd.oci.image.layer.v1.tar, +gzip, +zstd, or application/vnd.docker.image.rootfs.diff.tar.gzip); \
         this blob is something else (an artifact, a foreign-platform layer, an unknown compression) — check the \
         image reference and platform"
    )]
    UnsupportedMediaType { media_type: String },

    #[error("layer {layer}: cannot open the image root {}: {source}; it must be an existing, writable directory", root.display())]
    Root {
        layer: String,
        root: PathBuf,
        source: io::Error,
    },

    #[error(
        "layer {layer}: the layer stream is unreadable {}: {source}; the blob is truncated or corrupt, or not \
         the compression its media type says — delete it from the cache and pull it again",
        where_in(entry)
    )]
    Stream {
        layer: String,
        entry: Option<String>,
        source: io::Error,
    },

    #[error(
        "layer {layer}: entry {entry:?} refused: {reason}. Nothing outside the image root was touched; this layer \
         is malformed or hostile, so the image should not be used"
    )]
    Refused {
        layer: String,
        entry: String,
        reason: UnsafeEntry,
    },

    #[error("layer {layer}: entry {entry:?} is malformed: {problem}")]
    Malformed {
        layer: String,
        entry: String,
        problem: String,
    },

    #[error(
        "layer {layer}: entry {entry:?} has tar type {type_flag:?}, which wulfpack does not apply (only files, \
         directories, symlinks, hardlinks, devices and FIFOs belong in a filesystem layer); rebuild the layer \
         without it"
    )]
    UnsupportedEntry {
        layer: String,
        entry: String,
        type_flag: char,
    },

    #[error("layer {layer}: entry {entry:?}: could not {action}: {source}{}", hint(source))]
    Io {
        layer: String,
        entry: String,
        action: String,
        source: io::Error,
    },
}

impl LayerError {
    /// The layer the error is about (empty for [`LayerError::UnsupportedMediaType`]).
    pub fn layer(&self) -> &str {
        match self {
            Self::UnsupportedMediaType { .. } => "",
            Self::Root { layer, .. }
            | Self::Stream { layer, .. }
            | Self::Refused { layer, .. }
            | Self::Malformed { layer, .. }
            | Self::UnsupportedEntry { layer, .. }
            | Self::Io { layer, .. } => layer,
        }
    }

    /// The tar entry the error is about, when there is one.
    pub fn entry(&self) -> Option<&str> {
        match self {
            Self::UnsupportedMediaType { .. } | Self::Root { .. } => None,
            Self::Stream { entry, .. } => entry.as_deref(),
            Self::Refused { entry, .. }
            | Self::Malformed { entry, .. }
            | Self::UnsupportedEntry { entry, .. }
            | Self::Io { entry, .. } => Some(entry),
        }
    }
}

fn where_in(entry: &Option<String>) -> String {
    match entry {
        Some(e) => format!("at or after entry {e:?}"),
        None => "before its first entry".to_owned(),
    }
}

fn hint(e: &io::Error) -> &'static str {
    match e.raw_os_error().map(Errno::from_raw_os_error) {
        Some(Errno::NOSPC) | Some(Errno::DQUOT) => " — the filesystem holding the image root is full",
        Some(Errno::PERM) | Some(Errno::ACCESS) => {
            " — run as root (wulfd normally does), or apply without same_owner; check the root's permissions"
        }
        Some(Errno::ROFS) => " — the image root is on a read-only filesystem",
        Some(Errno::MLINK) => " — too many hardlinks to one file for this filesystem",
        Some(Errno::INVAL) => " — the filesystem or user namespace does not accept this value (unmapped uid/gid?)",
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_layer_and_entry() {
        let e = LayerError::Refused {
            layer: "sha256:abc".into(),
            entry: "x/etc/passwd".into(),
            reason: UnsafeEntry::SymlinkParent { component: "x".into() },
        };
        let s = e.to_string();
        assert!(
            s.contains("sha256:abc") && s.contains("x/etc/passwd") && s.contains("symbolic link"),
            "{s}"
        );
        assert_eq!(e.layer(), "sha256:abc");
        assert_eq!(e.entry(), Some("x/etc/passwd"));
    }
}
