//! Importing `oci-archive` and `docker-archive` tar files.
//!
//! Why it looks like this:
//! - **Index once, then seek.** One pass over the tar's headers (`entries_with_seek`, which
//!   skips entry data by seeking, not reading) records where each member's data starts and
//!   how long it is. Every later read — `index.json`, a manifest, a layer — opens the file,
//!   seeks to that offset and reads exactly that many bytes. So the archive is never read
//!   twice in full, blobs can be fetched in whatever order the manifest wants, and a layer
//!   streams from the archive straight into the CAS without being held in memory.
//! - **Links inside archives.** `docker save` and skopeo write the legacy per-layer
//!   directories as symlinks to the real layer files, and tar may store duplicates as hard
//!   links; lookups follow both (bounded), resolved lexically inside the archive.
//! - **Compressed archive files** (`.tar.gz`) cannot be seeked; they are refused with the
//!   advice to decompress first, rather than silently read twice through a decompressor.
//! - **Verification.** OCI layout blobs are named by digest: each is committed to the CAS
//!   with that expected digest. Docker archives name layers arbitrarily; their check is the
//!   config's `rootfs.diff_ids` (the digest of the uncompressed tar): a plain-tar layer is
//!   committed with its diff_id as the expected digest, a gzip layer is decompressed while
//!   copied and its uncompressed hash compared. The CAS digest of a layer is always that of
//!   the bytes as stored in the archive.

use std::collections::{BTreeSet, HashMap};
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use serde::Deserialize;
use sha2::{Digest as _, Sha256};

use super::{
    cas_err, copy_exact, io_err, parse_document, reported_platform, select_manifest, sniff_layer_media_type,
    Descriptor, Document, ImageConfig, Layer, OciError, Platform, PullProgress, Pulled, Reporter, MAX_JSON,
    MAX_NESTING,
};
use crate::cas::{Cas, Digest};

/// How many links a lookup follows before giving up (loops).
const MAX_LINKS: usize = 16;

#[derive(Debug, Clone)]
enum Item {
    File { offset: u64, size: u64 },
    Symlink(String),
    Hardlink(String),
    Other,
}

/// Where each member of a tar file lives.
pub(crate) struct TarIndex {
    path: PathBuf,
    entries: HashMap<String, Item>,
}

/// Normalize a member name lexically: no leading `./` or `/`, no `.` or empty components,
/// `..` removes the previous component (never climbs above the archive root).
fn normalize(name: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for c in name.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            c => parts.push(c),
        }
    }
    parts.join("/")
}

impl TarIndex {
    pub(crate) fn build(path: &Path, reporter: &Reporter) -> Result<TarIndex, OciError> {
        let mut file = File::open(path).map_err(io_err("cannot open image archive", path))?;
        let mut head = [0u8; 4];
        let mut got = 0;
        while got < head.len() {
            match file
                .read(&mut head[got..])
                .map_err(io_err("cannot read image archive", path))?
            {
                0 => break,
                n => got += n,
            }
        }
        if got == 0 {
            return Err(OciError::BadArchive {
                path: path.to_path_buf(),
                reason: "the file is empty".into(),
            });
        }
        let compressed = match sniff_layer_media_type(&head[..got]) {
            super::MEDIA_TYPE_LAYER_GZIP => Some("gzip"),
            super::MEDIA_TYPE_LAYER_ZSTD => Some("zstd"),
            _ => None,
        };
        if let Some(kind) = compressed {
            return Err(OciError::BadArchive {
                path: path.to_path_buf(),
                reason: format!("it is {kind}-compressed; decompress it to a plain .tar first and import that"),
            });
        }
        file.seek(SeekFrom::Start(0))
            .map_err(io_err("cannot read image archive", path))?;
        let bad = |e: io::Error| OciError::BadArchive {
            path: path.to_path_buf(),
            reason: format!("it is not a readable tar file ({e})"),
        };
        let mut ar = tar::Archive::new(file);
        let mut entries = HashMap::new();
        for entry in ar.entries_with_seek().map_err(bad)? {
            reporter.check()?;
            let e = entry.map_err(bad)?;
            let name = normalize(&String::from_utf8_lossy(&e.path_bytes()));
            let link = || {
                e.link_name_bytes()
                    .map(|b| String::from_utf8_lossy(&b).into_owned())
                    .unwrap_or_default()
            };
            let item = match e.header().entry_type() {
                tar::EntryType::Regular | tar::EntryType::Continuous => Item::File {
                    offset: e.raw_file_position(),
                    size: e.size(),
                },
                tar::EntryType::Symlink => Item::Symlink(link()),
                tar::EntryType::Link => Item::Hardlink(link()),
                _ => Item::Other,
            };
            // Later members replace earlier ones of the same name, as when extracting.
            entries.insert(name, item);
        }
        if entries.is_empty() {
            return Err(OciError::BadArchive {
                path: path.to_path_buf(),
                reason: "it is not a tar file, or an empty one".into(),
            });
        }
        Ok(TarIndex {
            path: path.to_path_buf(),
            entries,
        })
    }

    pub(crate) fn has(&self, name: &str) -> bool {
        self.entries.contains_key(&normalize(name))
    }

    /// Offset and size of a member's data, following links.
    fn resolve(&self, name: &str) -> Result<(u64, u64), OciError> {
        let missing = || OciError::MissingInArchive {
            path: self.path.clone(),
            name: name.to_string(),
        };
        let mut cur = normalize(name);
        for _ in 0..MAX_LINKS {
            match self.entries.get(&cur).ok_or_else(missing)? {
                Item::File { offset, size } => return Ok((*offset, *size)),
                Item::Hardlink(target) => cur = normalize(target),
                Item::Symlink(target) => {
                    cur = if target.starts_with('/') {
                        normalize(target)
                    } else {
                        let parent = cur.rsplit_once('/').map(|(p, _)| p).unwrap_or("");
                        normalize(&format!("{parent}/{target}"))
                    }
                }
                Item::Other => {
                    return Err(OciError::BadArchive {
                        path: self.path.clone(),
                        reason: format!("member {name} is not a regular file"),
                    })
                }
            }
        }
        Err(OciError::BadArchive {
            path: self.path.clone(),
            reason: format!("member {name} is a chain of more than {MAX_LINKS} links"),
        })
    }

    /// A reader of exactly the member's bytes, and their count.
    fn open(&self, name: &str) -> Result<(io::Take<File>, u64), OciError> {
        let (offset, size) = self.resolve(name)?;
        let mut f = File::open(&self.path).map_err(io_err("cannot open image archive", &self.path))?;
        f.seek(SeekFrom::Start(offset))
            .map_err(io_err("cannot read image archive", &self.path))?;
        Ok((f.take(size), size))
    }

    /// A small member (JSON) read whole.
    fn read_small(&self, name: &str) -> Result<Vec<u8>, OciError> {
        let (mut r, size) = self.open(name)?;
        if size > MAX_JSON {
            return Err(OciError::BadArchive {
                path: self.path.clone(),
                reason: format!("{name} is {size} bytes, too large for a JSON document"),
            });
        }
        let mut buf = Vec::with_capacity(size as usize);
        r.read_to_end(&mut buf)
            .map_err(io_err("cannot read image archive", &self.path))?;
        if buf.len() as u64 != size {
            return Err(OciError::BadArchive {
                path: self.path.clone(),
                reason: format!("{name} is truncated (the archive file is cut short)"),
            });
        }
        Ok(buf)
    }

    /// Stream a member into the CAS; `expected` makes the CAS refuse other content.
    #[allow(clippy::too_many_arguments)]
    fn store(
        &self,
        name: &str,
        expected: Option<&Digest>,
        tee: Option<&mut dyn Write>,
        cas: &Cas,
        image: &str,
        reporter: &Reporter,
        (index, count): (usize, usize),
        label: &str,
    ) -> Result<(Digest, u64), OciError> {
        let (mut src, size) = self.open(name)?;
        let what = format!("blob {name}");
        let mut w = cas.writer().map_err(cas_err(what.clone(), image))?;
        copy_exact(&mut src, &mut w, tee, size, reporter, index, count, label).map_err(|e| {
            if reporter.check().is_err() {
                OciError::Cancelled
            } else if e.kind() == io::ErrorKind::UnexpectedEof {
                OciError::BadArchive {
                    path: self.path.clone(),
                    reason: format!("{name} is truncated ({e}); the archive file is cut short"),
                }
            } else {
                OciError::Io {
                    what: "cannot copy a blob out of",
                    path: self.path.clone(),
                    source: e,
                }
            }
        })?;
        let digest = w.commit(expected).map_err(cas_err(what, image))?;
        Ok((digest, size))
    }
}

fn blob_name(d: &Descriptor) -> String {
    match d.digest.split_once(':') {
        Some((alg, hex)) => format!("blobs/{alg}/{hex}"),
        None => format!("blobs/{}", d.digest),
    }
}

/// A blob of an OCI layout, read whole and checked against its digest (manifests, indexes).
fn read_verified(idx: &TarIndex, d: &Descriptor, image: &str) -> Result<Vec<u8>, OciError> {
    let digest = d.cas_digest(image)?;
    let bytes = idx.read_small(&blob_name(d))?;
    let actual = Digest::of(&bytes);
    if actual != digest {
        return Err(OciError::BadArchive {
            path: idx.path.clone(),
            reason: format!("blob {} hashes to {actual}: it is damaged", d.digest),
        });
    }
    Ok(bytes)
}

/// Replace nested indexes by their entries (skopeo `--all` writes index.json → index blob →
/// platform manifests).
fn flatten(idx: &TarIndex, entries: Vec<Descriptor>, image: &str, depth: usize) -> Result<Vec<Descriptor>, OciError> {
    let mut out = Vec::new();
    for e in entries {
        if !e.is_index() {
            out.push(e);
            continue;
        }
        if depth >= MAX_NESTING {
            return Err(OciError::Unsupported {
                image: image.to_string(),
                reason: format!("image indexes are nested more than {MAX_NESTING} deep"),
            });
        }
        match parse_document(&read_verified(idx, &e, image)?, image, "a nested index")? {
            Document::Index(inner) => out.extend(flatten(idx, inner, image, depth + 1)?),
            Document::Manifest { .. } => {
                return Err(OciError::BadManifest {
                    image: image.to_string(),
                    what: format!("blob {}", e.digest),
                    reason: "it is declared an index but is a manifest".into(),
                })
            }
        }
    }
    Ok(out)
}

fn load_config(idx: &TarIndex, d: &Descriptor, image: &str) -> Result<(Vec<u8>, ImageConfig), OciError> {
    let bytes = read_verified(idx, d, image)?;
    let cfg = ImageConfig::parse(&bytes, image)?;
    Ok((bytes, cfg))
}

pub(super) fn pull_oci_archive(
    path: &Path,
    cas: &Cas,
    platform: &Platform,
    reporter: &Reporter,
) -> Result<Pulled, OciError> {
    let image = format!("oci-archive:{}", path.display());
    reporter.send(PullProgress::Message(format!("reading {image}")));
    let idx = TarIndex::build(path, reporter)?;
    if !idx.has("index.json") {
        let reason = if idx.has("manifest.json") {
            format!(
                "it has manifest.json but no index.json: it is a docker archive; import it as docker-archive:{}",
                path.display()
            )
        } else {
            "it has no index.json, so it is not an OCI image layout".to_string()
        };
        return Err(OciError::BadArchive {
            path: path.to_path_buf(),
            reason,
        });
    }
    let top = match parse_document(&idx.read_small("index.json")?, &image, "index.json")? {
        Document::Index(entries) => entries,
        Document::Manifest { .. } => {
            return Err(OciError::BadManifest {
                image,
                what: "index.json".into(),
                reason: "it is an image manifest, not an index".into(),
            })
        }
    };
    let refs: BTreeSet<&str> = top.iter().filter_map(Descriptor::ref_name).collect();
    if refs.len() > 1 {
        return Err(OciError::BadArchive {
            path: path.to_path_buf(),
            reason: format!(
                "it holds several images ({}); export just the one to import",
                refs.into_iter().collect::<Vec<_>>().join(", ")
            ),
        });
    }
    let mut entries = flatten(&idx, top, &image, 1)?;
    // Several candidates without a declared platform: learn theirs from their configs.
    let undeclared = entries
        .iter()
        .filter(|e| e.platform.is_none() && !e.is_attachment())
        .count();
    if entries.len() > 1 && undeclared > 0 {
        for e in entries.iter_mut().filter(|e| e.platform.is_none()) {
            if let Document::Manifest { config, .. } =
                parse_document(&read_verified(&idx, e, &image)?, &image, "a manifest")?
            {
                let (_, cfg) = load_config(&idx, &config, &image)?;
                e.platform = Some(super::PlatformJson {
                    os: cfg.os.clone().unwrap_or_default(),
                    architecture: cfg.architecture.clone().unwrap_or_default(),
                    variant: cfg.variant.clone(),
                });
            }
        }
    }
    let chosen = select_manifest(&entries, platform, &image)?.clone();
    let manifest_digest = chosen.cas_digest(&image)?;
    let (config_desc, layer_descs) =
        match parse_document(&read_verified(&idx, &chosen, &image)?, &image, "the manifest")? {
            Document::Manifest { config, layers } => (config, layers),
            Document::Index(_) => {
                return Err(OciError::BadManifest {
                    image,
                    what: format!("blob {}", chosen.digest),
                    reason: "it is declared a manifest but is an index".into(),
                })
            }
        };

    let (config_bytes, config) = load_config(&idx, &config_desc, &image)?;
    if chosen.platform.is_none() {
        config.check_platform(platform, &image)?;
    }
    let config_digest = cas
        .put_bytes(&config_bytes)
        .map_err(cas_err(format!("config {}", config_desc.digest), &image))?;

    let count = layer_descs.len();
    let mut layers = Vec::with_capacity(count);
    for (index, d) in layer_descs.iter().enumerate() {
        reporter.check()?;
        let digest = d.cas_digest(&image)?;
        let size = if cas.contains(&digest) && cas.verify(&digest).is_ok() {
            reporter.send(PullProgress::Message(format!(
                "layer {}/{count} {} already in the store",
                index + 1,
                d.digest
            )));
            let size = cas
                .size(&digest)
                .map_err(cas_err(format!("layer {}", d.digest), &image))?;
            reporter.send(PullProgress::Layer {
                index,
                count,
                digest: d.digest.clone(),
                done: size,
                total: size,
            });
            size
        } else {
            let name = blob_name(d);
            idx.store(
                &name,
                Some(&digest),
                None,
                cas,
                &image,
                reporter,
                (index, count),
                &d.digest,
            )?
            .1
        };
        if d.size != 0 && d.size != size {
            return Err(OciError::BadArchive {
                path: path.to_path_buf(),
                reason: format!("layer {} is {size} bytes, but the manifest says {}", d.digest, d.size),
            });
        }
        layers.push(Layer {
            digest,
            media_type: if d.media_type.is_empty() {
                super::MEDIA_TYPE_LAYER_GZIP.to_string()
            } else {
                d.media_type.clone()
            },
            size,
        });
    }
    Ok(Pulled {
        layers,
        config: Some(config_digest),
        platform: reported_platform(chosen.platform.as_ref(), &config, platform),
        source: format!("oci-archive:{}@{manifest_digest}", path.display()),
        manifest: Some(manifest_digest),
    })
}

#[derive(Debug, Deserialize)]
struct DockerEntry {
    #[serde(rename = "Config")]
    config: String,
    #[serde(rename = "RepoTags", default)]
    repo_tags: Option<Vec<String>>,
    #[serde(rename = "Layers", default)]
    layers: Vec<String>,
}

impl DockerEntry {
    fn describe(&self) -> String {
        match &self.repo_tags {
            Some(t) if !t.is_empty() => t.join(" "),
            _ => self.config.clone(),
        }
    }
}

/// The digest a docker-archive member name carries (`<hex>.json`, `<hex>.tar`,
/// `blobs/sha256/<hex>`), if any.
fn digest_in_name(name: &str) -> Option<Digest> {
    let base = name.rsplit('/').next()?;
    let stem = base.split('.').next()?;
    if stem.len() == 64 && stem.bytes().all(|b| b.is_ascii_hexdigit()) {
        stem.parse().ok()
    } else {
        None
    }
}

/// Hashes what is written to it.
struct HashSink(Sha256);

impl Write for HashSink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Decompresses gzip written to it and hashes the result (a layer's diff_id). Never fails a
/// write: a decompression error is kept for [`DiffIdHasher::finish`], so it cannot be
/// mistaken for an error of the copy it rides along with.
struct DiffIdHasher {
    dec: Option<flate2::write::MultiGzDecoder<HashSink>>,
    err: Option<io::Error>,
}

impl DiffIdHasher {
    fn new() -> DiffIdHasher {
        DiffIdHasher {
            dec: Some(flate2::write::MultiGzDecoder::new(HashSink(Sha256::new()))),
            err: None,
        }
    }

    fn finish(mut self) -> io::Result<Digest> {
        if let Some(e) = self.err.take() {
            return Err(e);
        }
        let sink = self.dec.take().expect("decoder present without error").finish()?;
        Ok(Digest(sink.0.finalize().into()))
    }
}

impl Write for DiffIdHasher {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if let Some(dec) = self.dec.as_mut() {
            if let Err(e) = dec.write_all(buf) {
                self.err = Some(e);
                self.dec = None;
            }
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

pub(super) fn pull_docker_archive(
    path: &Path,
    cas: &Cas,
    platform: &Platform,
    reporter: &Reporter,
) -> Result<Pulled, OciError> {
    let image = format!("docker-archive:{}", path.display());
    reporter.send(PullProgress::Message(format!("reading {image}")));
    let idx = TarIndex::build(path, reporter)?;
    if !idx.has("manifest.json") {
        let reason = if idx.has("index.json") {
            format!(
                "it has index.json but no manifest.json: it is an OCI archive; import it as oci-archive:{}",
                path.display()
            )
        } else {
            "it has no manifest.json, so it is not a docker save archive".to_string()
        };
        return Err(OciError::BadArchive {
            path: path.to_path_buf(),
            reason,
        });
    }
    let entries: Vec<DockerEntry> =
        serde_json::from_slice(&idx.read_small("manifest.json")?).map_err(|e| OciError::BadManifest {
            image: image.clone(),
            what: "manifest.json".into(),
            reason: format!("invalid JSON ({e})"),
        })?;
    let mut candidates = Vec::new();
    for e in entries {
        let bytes = idx.read_small(&e.config)?;
        let cfg = ImageConfig::parse(&bytes, &image)?;
        candidates.push((e, bytes, cfg));
    }
    let (entry, config_bytes, config) = match candidates.len() {
        0 => {
            return Err(OciError::BadArchive {
                path: path.to_path_buf(),
                reason: "its manifest.json lists no image".into(),
            })
        }
        1 => {
            let c = candidates.pop().expect("one candidate");
            c.2.check_platform(platform, &image)?;
            c
        }
        _ => {
            let available: Vec<String> = candidates
                .iter()
                .map(|(e, _, c)| format!("{} ({})", e.describe(), c.platform().unwrap_or_else(|| "?".into())))
                .collect();
            let mut matching: Vec<_> = candidates
                .into_iter()
                .filter(|(_, _, c)| c.check_platform(platform, &image).is_ok())
                .collect();
            match matching.len() {
                1 => matching.pop().expect("one match"),
                0 => {
                    return Err(OciError::NoPlatform {
                        image,
                        wanted: platform.to_string(),
                        available: available.join(", "),
                    })
                }
                _ => {
                    return Err(OciError::BadArchive {
                        path: path.to_path_buf(),
                        reason: format!(
                            "it holds several images for {platform} ({}); export just the one to import",
                            matching
                                .iter()
                                .map(|(e, _, _)| e.describe())
                                .collect::<Vec<_>>()
                                .join(", ")
                        ),
                    })
                }
            }
        }
    };

    let config_digest = cas
        .put_bytes(&config_bytes)
        .map_err(cas_err(format!("config {}", entry.config), &image))?;
    if let Some(named) = digest_in_name(&entry.config) {
        if named != config_digest {
            return Err(OciError::BadArchive {
                path: path.to_path_buf(),
                reason: format!("config {} hashes to {config_digest}: it is damaged", entry.config),
            });
        }
    }

    let diff_ids: Vec<Digest> = config
        .rootfs
        .as_ref()
        .map(|r| r.diff_ids.iter().map(|d| d.parse()).collect::<Result<Vec<Digest>, _>>())
        .transpose()
        .map_err(|e| OciError::BadManifest {
            image: image.clone(),
            what: "the image config".into(),
            reason: format!("a diff_id is not a sha256 digest ({e})"),
        })?
        .unwrap_or_default();
    if !diff_ids.is_empty() && diff_ids.len() != entry.layers.len() {
        return Err(OciError::BadArchive {
            path: path.to_path_buf(),
            reason: format!(
                "manifest.json lists {} layers but the config has {} diff_ids",
                entry.layers.len(),
                diff_ids.len()
            ),
        });
    }

    let count = entry.layers.len();
    let mut layers = Vec::with_capacity(count);
    for (index, name) in entry.layers.iter().enumerate() {
        reporter.check()?;
        let diff_id = diff_ids.get(index);
        let mut head = [0u8; 4];
        let n = {
            let (mut r, _) = idx.open(name)?;
            let mut got = 0;
            while got < head.len() {
                match r
                    .read(&mut head[got..])
                    .map_err(io_err("cannot read image archive", path))?
                {
                    0 => break,
                    k => got += k,
                }
            }
            got
        };
        let media_type = sniff_layer_media_type(&head[..n]);
        let label = diff_id.map(Digest::to_string).unwrap_or_else(|| name.clone());
        let (digest, size) = match (media_type, diff_id) {
            (super::MEDIA_TYPE_LAYER_TAR, Some(d)) => {
                idx.store(name, Some(d), None, cas, &image, reporter, (index, count), &label)?
            }
            (super::MEDIA_TYPE_LAYER_GZIP, Some(d)) => {
                let mut hasher = DiffIdHasher::new();
                let stored = idx.store(
                    name,
                    None,
                    Some(&mut hasher),
                    cas,
                    &image,
                    reporter,
                    (index, count),
                    &label,
                )?;
                let uncompressed = hasher.finish().map_err(|e| OciError::BadArchive {
                    path: path.to_path_buf(),
                    reason: format!("layer {name} is not valid gzip ({e})"),
                })?;
                if uncompressed != *d {
                    return Err(OciError::BadArchive {
                        path: path.to_path_buf(),
                        reason: format!(
                            "layer {name} decompresses to content hashing to {uncompressed}, but the config's diff_id is {d}: it is damaged"
                        ),
                    });
                }
                stored
            }
            _ => {
                let expected = digest_in_name(name);
                idx.store(
                    name,
                    expected.as_ref(),
                    None,
                    cas,
                    &image,
                    reporter,
                    (index, count),
                    &label,
                )?
            }
        };
        layers.push(Layer {
            digest,
            media_type: media_type.to_string(),
            size,
        });
    }
    Ok(Pulled {
        layers,
        config: Some(config_digest),
        platform: reported_platform(None, &config, platform),
        source: format!("docker-archive:{}@{config_digest}", path.display()),
        manifest: None,
    })
}
