//! The two writers around the compressor.
//!
//! ```text
//! walk → ArchiveSink ──(uncompressed cpio)──▶ ParGz ──(gzip)──▶ HashWriter ──▶ caller's W
//!        counts bytes,                        workers +          sha256 + count,
//!        swallows flush()                     writer thread      aborts on request
//! ```
//!
//! * [`ArchiveSink`] exists because `cpio::newc::Writer::finish` calls `flush()` on its writer
//!   after every entry. A parallel gzip must not cut a block there (a pigz-style compressor
//!   would deflate one tiny block per file, and where blocks are cut would depend on the
//!   writes, not only on the bytes), so flush is a no-op; the compressor is finished exactly
//!   once at the end.
//! * [`HashWriter`] runs on the compressor's writer thread, so hashing the output costs the
//!   producer nothing. Its abort flag lets a failed build poison the output: once set, every
//!   write fails, so nothing more (and never a gzip trailer) reaches a half-built archive.

use std::io::{self, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use sha2::{Digest, Sha256};

/// Counts the uncompressed archive bytes and ignores `flush()`; see the module note.
pub(crate) struct ArchiveSink<Z: Write> {
    inner: Z,
    written: u64,
}

impl<Z: Write> ArchiveSink<Z> {
    pub(crate) fn new(inner: Z) -> Self {
        ArchiveSink { inner, written: 0 }
    }

    /// Uncompressed bytes accepted so far.
    pub(crate) fn written(&self) -> u64 {
        self.written
    }

    /// The compressor.
    pub(crate) fn into_inner(self) -> Z {
        self.inner
    }
}

impl<Z: Write> Write for ArchiveSink<Z> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Hashes and counts what reaches the caller's writer; fails every write once aborted.
pub(crate) struct HashWriter<W: Write> {
    inner: W,
    hasher: Sha256,
    written: u64,
    abort: Arc<AtomicBool>,
}

impl<W: Write> HashWriter<W> {
    pub(crate) fn new(inner: W, abort: Arc<AtomicBool>) -> Self {
        HashWriter {
            inner,
            hasher: Sha256::new(),
            written: 0,
            abort,
        }
    }

    /// Bytes written and the lowercase hex sha256 of them.
    pub(crate) fn finish(self) -> (u64, String) {
        (self.written, hex(&self.hasher.finalize()))
    }
}

impl<W: Write> Write for HashWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.abort.load(Ordering::Relaxed) {
            return Err(io::Error::other("image build aborted; the output is incomplete"));
        }
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Lowercase hex of `bytes`.
pub(crate) fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[usize::from(b >> 4)] as char);
        s.push(DIGITS[usize::from(b & 15)] as char);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Fails every write; counts flushes.
    struct Broken(usize);
    impl Write for Broken {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            Err(io::Error::other("disk on fire"))
        }
        fn flush(&mut self) -> io::Result<()> {
            self.0 += 1;
            Ok(())
        }
    }

    #[test]
    fn archive_sink_counts_and_swallows_flush() {
        let mut s = ArchiveSink::new(Vec::new());
        s.write_all(b"hello").unwrap();
        s.flush().unwrap();
        assert_eq!(s.written(), 5);
        assert_eq!(s.into_inner(), b"hello");

        let mut s = ArchiveSink::new(Broken(0));
        s.flush().unwrap();
        assert!(s.write_all(b"x").is_err());
        assert_eq!(s.into_inner().0, 0, "flush must not reach the compressor");
    }

    #[test]
    fn hash_writer_hashes_and_aborts() {
        let abort = Arc::new(AtomicBool::new(false));
        let mut w = HashWriter::new(Vec::new(), abort.clone());
        w.write_all(b"abc").unwrap();
        abort.store(true, Ordering::Relaxed);
        assert!(w.write_all(b"more").is_err());
        let (n, sum) = w.finish();
        assert_eq!(n, 3);
        assert_eq!(sum, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    }

    #[test]
    fn hex_encodes() {
        assert_eq!(hex(&[0, 0x0f, 0xa0, 0xff]), "000fa0ff");
    }
}
