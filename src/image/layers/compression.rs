//! Which decompressor a layer blob needs, from its media type or its magic number.

use serde::{Deserialize, Serialize};

use super::LayerError;

/// How a layer blob is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    /// A plain tar stream.
    None,
    /// gzip (RFC 1952), possibly several concatenated members.
    Gzip,
    /// Zstandard (RFC 8878), possibly several frames.
    Zstd,
}

impl Compression {
    /// The compression implied by a layer descriptor's media type (OCI, OCI non-distributable, Docker v2).
    /// Parameters after `;` are ignored.
    pub fn from_media_type(mt: &str) -> Result<Self, LayerError> {
        let base = mt.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
        match base.as_str() {
            "application/vnd.oci.image.layer.v1.tar"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar"
            | "application/vnd.docker.image.rootfs.diff.tar" => Ok(Self::None),
            "application/vnd.oci.image.layer.v1.tar+gzip"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
            | "application/vnd.docker.image.rootfs.diff.tar.gzip"
            | "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip" => Ok(Self::Gzip),
            "application/vnd.oci.image.layer.v1.tar+zstd"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd"
            | "application/vnd.docker.image.rootfs.diff.tar.zstd" => Ok(Self::Zstd),
            _ => Err(LayerError::UnsupportedMediaType {
                media_type: mt.to_owned(),
            }),
        }
    }

    /// Guess from the first bytes of a blob: gzip and zstd have magic numbers; anything else is taken as tar.
    pub fn sniff(first_bytes: &[u8]) -> Self {
        if first_bytes.starts_with(&[0x1f, 0x8b]) {
            Self::Gzip
        } else if first_bytes.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Self::Zstd
        } else {
            Self::None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn media_types() {
        use Compression::*;
        let cases = [
            ("application/vnd.oci.image.layer.v1.tar", None),
            ("application/vnd.oci.image.layer.v1.tar+gzip", Gzip),
            ("application/vnd.oci.image.layer.v1.tar+zstd", Zstd),
            ("application/vnd.oci.image.layer.nondistributable.v1.tar+gzip", Gzip),
            ("application/vnd.docker.image.rootfs.diff.tar.gzip", Gzip),
            ("application/vnd.docker.image.rootfs.foreign.diff.tar.gzip", Gzip),
            ("Application/VND.oci.image.layer.v1.tar+zstd; foo=bar", Zstd),
        ];
        for (mt, want) in cases {
            assert_eq!(Compression::from_media_type(mt).unwrap(), want, "{mt}");
        }
        let err = Compression::from_media_type("application/vnd.oci.image.config.v1+json").unwrap_err();
        assert!(matches!(err, LayerError::UnsupportedMediaType { .. }));
        assert!(err.to_string().contains("application/vnd.oci.image.config.v1+json"));
    }

    #[test]
    fn sniffing() {
        assert_eq!(Compression::sniff(&[0x1f, 0x8b, 8, 0]), Compression::Gzip);
        assert_eq!(Compression::sniff(&[0x28, 0xb5, 0x2f, 0xfd, 0]), Compression::Zstd);
        assert_eq!(Compression::sniff(b"etc/passwd\0"), Compression::None);
        assert_eq!(Compression::sniff(&[]), Compression::None);
    }
}
