//! # Content-addressed store (CAS)
//!
//! Every large artifact (OCI layers, kernels, built image `cpio.gz`) is a blob named
//! by its sha256, under `<data_dir>/cas/sha256/<2 hex>/<64 hex>`. Raft only carries
//! names → digests; the bytes live here, on every head that needs them.
//!
//! Design notes:
//! - **Atomic writes.** A blob is written to a unique temp file while being hashed,
//!   fsynced, checked against the digest the caller expects, then renamed into place
//!   and the directory fsynced. A crash leaves a temp file (collected by GC), never a
//!   half blob under a digest name. Two writers of one digest each rename a complete,
//!   identical file; the last rename wins and nothing is torn.
//! - **Verified reads.** Bits rot and disks lie: [`Cas::verify`] re-hashes a blob before
//!   it is served or used, and moves a blob whose content does not match its name to
//!   `corrupt/` so it is neither served nor trusted (a peer fetch can then replace it).
//!   Verification results are cached by (size, mtime, inode), so a blob streamed to
//!   thousands of nodes is hashed once, not per request.
//! - **Peer fetch.** A head that lacks a blob fetches it from a peer over HTTP
//!   (`GET /blob/sha256:<hex>`) into the same atomic writer with the expected digest,
//!   so a wrong or truncated answer is rejected.
//! - **GC.** Blobs no catalog entry references are removed once older than a grace
//!   period, so an import in progress (blobs written, catalog entry not yet
//!   committed) is never collected under it.

pub mod http;
pub mod serve;
pub mod sync;
pub mod zerocopy;

use std::collections::{HashMap, HashSet};
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use sha2::{Digest as _, Sha256};
use tokio::io::AsyncWrite;

#[derive(Debug, thiserror::Error)]
pub enum CasError {
    #[error(transparent)]
    BadDigest(#[from] crate::model::ModelError),
    #[error("blob {0} is not in this head's store")]
    Missing(Digest),
    #[error("blob {digest} is corrupt on disk (content hashes to {actual}); it was moved to {quarantine} and will be fetched again")]
    Corrupt {
        digest: Digest,
        actual: Digest,
        quarantine: PathBuf,
    },
    #[error(
        "received data hashes to {actual}, not the expected {expected}; the source is wrong or the transfer was cut"
    )]
    Mismatch { expected: Digest, actual: Digest },
    #[error("CAS I/O on {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("no peer could supply blob {digest}: {errors}")]
    PeerFetch { digest: Digest, errors: String },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> CasError + '_ {
    move |source| CasError::Io {
        path: path.to_path_buf(),
        source,
    }
}

pub use crate::model::Digest;

/// One stored blob.
#[derive(Debug, Clone, PartialEq)]
pub struct BlobInfo {
    pub digest: Digest,
    pub size: u64,
    pub modified: SystemTime,
}

/// What a GC pass did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GcStats {
    pub kept: usize,
    pub removed: usize,
    pub bytes_freed: u64,
    pub temp_removed: usize,
}

type VerifyKey = (u64, i64, i64, u64); // size, mtime s, mtime ns, inode

/// The store of one head.
#[derive(Clone)]
pub struct Cas {
    root: Arc<PathBuf>,
    verified: Arc<Mutex<HashMap<Digest, VerifyKey>>>,
    /// One peer transfer per digest at a time, whoever asks (the artifact sync, a
    /// boot request, an image build): they share one resumable temp file.
    fetching: Arc<Mutex<HashMap<Digest, Arc<tokio::sync::Mutex<()>>>>>,
    /// Counts quarantined blobs, so the artifact sync refetches one at once, whoever
    /// found it corrupt (a verified read while serving, or the scrub).
    quarantined: Arc<tokio::sync::watch::Sender<u64>>,
}

static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

impl std::fmt::Debug for Cas {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cas").field("root", &self.root).finish_non_exhaustive()
    }
}

impl Cas {
    /// Open (creating) the store under `dir` (normally `<data_dir>/cas`).
    pub fn open(dir: &Path) -> Result<Cas, CasError> {
        for sub in ["sha256", "tmp", "corrupt"] {
            let p = dir.join(sub);
            fs::create_dir_all(&p).map_err(io_err(&p))?;
        }
        Ok(Cas {
            root: Arc::new(dir.to_path_buf()),
            verified: Arc::default(),
            fetching: Arc::default(),
            quarantined: Arc::new(tokio::sync::watch::Sender::new(0)),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where a blob lives (whether or not it is present).
    pub fn path(&self, d: &Digest) -> PathBuf {
        let hex = d.hex();
        self.root.join("sha256").join(&hex[..2]).join(hex)
    }

    pub fn contains(&self, d: &Digest) -> bool {
        self.path(d).is_file()
    }

    /// Size of a present blob.
    pub fn size(&self, d: &Digest) -> Result<u64, CasError> {
        let p = self.path(d);
        match fs::metadata(&p) {
            Ok(m) => Ok(m.len()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(CasError::Missing(*d)),
            Err(e) => Err(io_err(&p)(e)),
        }
    }

    fn temp_path(&self) -> PathBuf {
        self.root.join("tmp").join(format!(
            "{}-{}.part",
            std::process::id(),
            TMP_COUNTER.fetch_add(1, Ordering::Relaxed)
        ))
    }

    /// A writer for a new blob; call [`BlobWriter::commit`] to store it.
    pub fn writer(&self) -> Result<BlobWriter, CasError> {
        let tmp = self.temp_path();
        let file = File::create(&tmp).map_err(io_err(&tmp))?;
        Ok(BlobWriter {
            cas: self.clone(),
            tmp,
            file: Some(file),
            hasher: Sha256::new(),
            len: 0,
        })
    }

    /// An async writer for a new blob (for network streams).
    pub async fn async_writer(&self) -> Result<AsyncBlobWriter, CasError> {
        let tmp = self.temp_path();
        let file = tokio::fs::File::create(&tmp).await.map_err(io_err(&tmp))?;
        Ok(AsyncBlobWriter {
            cas: self.clone(),
            tmp,
            file: Some(file),
            hasher: Sha256::new(),
            len: 0,
        })
    }

    /// Store a byte slice.
    pub fn put_bytes(&self, bytes: &[u8]) -> Result<Digest, CasError> {
        let mut w = self.writer()?;
        w.write_all(bytes).map_err(io_err(&w.tmp.clone()))?;
        w.commit(None)
    }

    /// Store a file's content (copied, hashed while copying).
    pub fn put_file(&self, src: &Path) -> Result<Digest, CasError> {
        let mut f = File::open(src).map_err(io_err(src))?;
        let mut w = self.writer()?;
        io::copy(&mut f, &mut w).map_err(io_err(src))?;
        w.commit(None)
    }

    /// Move a finished temp file into place under `d`.
    fn install(&self, tmp: &Path, d: &Digest) -> Result<(), CasError> {
        let dest = self.path(d);
        let dir = dest.parent().expect("blob path has a parent");
        fs::create_dir_all(dir).map_err(io_err(dir))?;
        fs::rename(tmp, &dest).map_err(io_err(&dest))?;
        // The rename is durable only once the directory entry is.
        File::open(dir).and_then(|d| d.sync_all()).map_err(io_err(dir))?;
        self.verified.lock().expect("verify cache").remove(d);
        Ok(())
    }

    /// Re-hash a blob; a mismatch quarantines it. Cached until the file changes.
    pub fn verify(&self, d: &Digest) -> Result<u64, CasError> {
        self.verify_with(d, false, &mut |_| {})
    }

    /// Re-hash a blob whatever the cache says (the scrub: bits rot without changing
    /// size, mtime or inode). `pace` is called with each chunk's length before it is
    /// read, so the caller can bound the I/O rate. A mismatch quarantines the blob.
    pub fn verify_fully(&self, d: &Digest, pace: &mut dyn FnMut(usize)) -> Result<u64, CasError> {
        self.verify_with(d, true, pace)
    }

    fn verify_with(&self, d: &Digest, force: bool, pace: &mut dyn FnMut(usize)) -> Result<u64, CasError> {
        let p = self.path(d);
        let meta = match fs::metadata(&p) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(CasError::Missing(*d)),
            Err(e) => return Err(io_err(&p)(e)),
        };
        let key = (meta.len(), meta.mtime(), meta.mtime_nsec(), meta.ino());
        if !force && self.verified.lock().expect("verify cache").get(d) == Some(&key) {
            return Ok(meta.len());
        }
        let mut f = File::open(&p).map_err(io_err(&p))?;
        let mut h = Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        loop {
            pace(buf.len());
            let n = f.read(&mut buf).map_err(io_err(&p))?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
        }
        let actual = Digest(h.finalize().into());
        if actual != *d {
            self.verified.lock().expect("verify cache").remove(d);
            let quarantine = self.root.join("corrupt").join(format!(
                "{}-{}",
                d.hex(),
                SystemTime::now()
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .map(|t| t.as_secs())
                    .unwrap_or(0)
            ));
            fs::rename(&p, &quarantine).map_err(io_err(&p))?;
            tracing::error!(%d, %actual, "corrupt blob quarantined");
            self.quarantined.send_modify(|n| *n += 1);
            return Err(CasError::Corrupt {
                digest: *d,
                actual,
                quarantine,
            });
        }
        self.verified.lock().expect("verify cache").insert(*d, key);
        Ok(meta.len())
    }

    /// Changes whenever a corrupt blob is quarantined (the value counts them).
    pub fn quarantine_watch(&self) -> tokio::sync::watch::Receiver<u64> {
        self.quarantined.subscribe()
    }

    /// Where an interrupted peer transfer of `d` keeps its bytes, so the next
    /// attempt (from any peer) resumes with a Range request instead of starting over.
    pub fn partial_path(&self, d: &Digest) -> PathBuf {
        self.root.join("tmp").join(format!("{}.partial", d.hex()))
    }

    /// Hold this while transferring `d` from a peer (one transfer per digest).
    pub(crate) async fn fetch_turn(&self, d: &Digest) -> FetchTurn {
        let gate = self
            .fetching
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(*d)
            .or_default()
            .clone();
        let guard = gate.clone().lock_owned().await;
        FetchTurn {
            map: self.fetching.clone(),
            digest: *d,
            gate,
            guard: Some(guard),
        }
    }

    /// Open a blob for reading after verifying it.
    pub fn open_verified(&self, d: &Digest) -> Result<File, CasError> {
        self.verify(d)?;
        let p = self.path(d);
        File::open(&p).map_err(io_err(&p))
    }

    /// Every blob present.
    pub fn list(&self) -> Result<Vec<BlobInfo>, CasError> {
        let base = self.root.join("sha256");
        let mut out = Vec::new();
        for sub in fs::read_dir(&base).map_err(io_err(&base))? {
            let sub = sub.map_err(io_err(&base))?.path();
            if !sub.is_dir() {
                continue;
            }
            for f in fs::read_dir(&sub).map_err(io_err(&sub))? {
                let f = f.map_err(io_err(&sub))?;
                let name = f.file_name().to_string_lossy().to_string();
                let Ok(digest) = name.parse::<Digest>() else { continue };
                let meta = f.metadata().map_err(io_err(&f.path()))?;
                out.push(BlobInfo {
                    digest,
                    size: meta.len(),
                    modified: meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                });
            }
        }
        out.sort_by_key(|b| b.digest);
        Ok(out)
    }

    /// Remove blobs not in `referenced` and temp files, when older than `grace`.
    pub fn gc(&self, referenced: &HashSet<Digest>, grace: Duration) -> Result<GcStats, CasError> {
        let now = SystemTime::now();
        let old = |t: SystemTime| now.duration_since(t).map(|age| age >= grace).unwrap_or(false);
        let mut st = GcStats::default();
        for b in self.list()? {
            if referenced.contains(&b.digest) || !old(b.modified) {
                st.kept += 1;
                continue;
            }
            let p = self.path(&b.digest);
            match fs::remove_file(&p) {
                Ok(()) => {
                    st.removed += 1;
                    st.bytes_freed += b.size;
                    self.verified.lock().expect("verify cache").remove(&b.digest);
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err(&p)(e)),
            }
        }
        let tmp = self.root.join("tmp");
        for f in fs::read_dir(&tmp).map_err(io_err(&tmp))? {
            let f = f.map_err(io_err(&tmp))?;
            let modified = f.metadata().and_then(|m| m.modified()).unwrap_or(now);
            if old(modified) && fs::remove_file(f.path()).is_ok() {
                st.temp_removed += 1;
            }
        }
        Ok(st)
    }
}

/// A turn at fetching one digest (see [`Cas::fetch_turn`]); the gate is dropped from
/// the map when nobody else waits.
pub(crate) struct FetchTurn {
    map: Arc<Mutex<HashMap<Digest, Arc<tokio::sync::Mutex<()>>>>>,
    digest: Digest,
    gate: Arc<tokio::sync::Mutex<()>>,
    guard: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl Drop for FetchTurn {
    fn drop(&mut self) {
        drop(self.guard.take());
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        // Only the map and this turn hold the gate: nobody waits, drop it.
        if Arc::strong_count(&self.gate) == 2 {
            map.remove(&self.digest);
        }
    }
}

/// Writes a blob to a temp file while hashing it.
#[derive(Debug)]
pub struct BlobWriter {
    cas: Cas,
    tmp: PathBuf,
    file: Option<File>,
    hasher: Sha256,
    len: u64,
}

impl Write for BlobWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.file.as_mut().expect("writer open").write(buf)?;
        self.hasher.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.file.as_mut().expect("writer open").flush()
    }
}

impl BlobWriter {
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// fsync, check against `expected` (if given) and store. Returns the digest.
    pub fn commit(mut self, expected: Option<&Digest>) -> Result<Digest, CasError> {
        let file = self.file.take().expect("writer open");
        file.sync_all().map_err(io_err(&self.tmp))?;
        drop(file);
        let actual = Digest(std::mem::take(&mut self.hasher).finalize().into());
        if let Some(e) = expected {
            if *e != actual {
                return Err(CasError::Mismatch { expected: *e, actual });
            }
        }
        self.cas.install(&self.tmp, &actual)?;
        Ok(actual)
    }
}

impl Drop for BlobWriter {
    fn drop(&mut self) {
        // Uncommitted or failed: leave no temp file behind (a rename already moved it otherwise).
        let _ = fs::remove_file(&self.tmp);
    }
}

/// Async twin of [`BlobWriter`].
#[derive(Debug)]
pub struct AsyncBlobWriter {
    cas: Cas,
    tmp: PathBuf,
    file: Option<tokio::fs::File>,
    hasher: Sha256,
    len: u64,
}

impl AsyncWrite for AsyncBlobWriter {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let file = this.file.as_mut().expect("writer open");
        match Pin::new(file).poll_write(cx, buf) {
            Poll::Ready(Ok(n)) => {
                this.hasher.update(&buf[..n]);
                this.len += n as u64;
                Poll::Ready(Ok(n))
            }
            other => other,
        }
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(self.file.as_mut().expect("writer open")).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(self.file.as_mut().expect("writer open")).poll_shutdown(cx)
    }
}

impl AsyncBlobWriter {
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// fsync, check against `expected` (if given) and store.
    pub async fn commit(mut self, expected: Option<&Digest>) -> Result<Digest, CasError> {
        use tokio::io::AsyncWriteExt;
        let mut file = self.file.take().expect("writer open");
        file.flush().await.map_err(io_err(&self.tmp))?;
        file.sync_all().await.map_err(io_err(&self.tmp))?;
        drop(file);
        let actual = Digest(std::mem::take(&mut self.hasher).finalize().into());
        if let Some(e) = expected {
            if *e != actual {
                return Err(CasError::Mismatch { expected: *e, actual });
            }
        }
        let cas = self.cas.clone();
        let tmp = self.tmp.clone();
        let d = actual;
        tokio::task::spawn_blocking(move || cas.install(&tmp, &d))
            .await
            .map_err(|e| CasError::Io {
                path: self.tmp.clone(),
                source: io::Error::other(e),
            })??;
        Ok(actual)
    }
}

impl Drop for AsyncBlobWriter {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.tmp);
    }
}

#[cfg(test)]
mod tests;
