//! Streaming Zstandard decoding for `+zstd` layers, on the pure-Rust `ruzstd` decoder.
//!
//! Why `ruzstd` and not the `zstd` crate: layers are untrusted input, and `ruzstd` is memory-safe Rust with no
//! C library to build (no `cc`, no vendored libzstd), while being fast enough for image pulls, which are
//! network- and disk-bound. Its default window limit (128 MiB, like libzstd's streaming default) bounds what a
//! hostile frame header can make us allocate.
//!
//! Why this wrapper: `ruzstd::StreamingDecoder` reads exactly one frame, but a valid `.zst` stream may hold
//! several (`zstd -T0`, `pzstd`, `cat a.zst b.zst`), plus skippable frames (seekable-format indexes, estargz-
//! style metadata). [`ZstdFrames`] decodes frame after frame until the input ends, skips skippable frames, and
//! verifies each frame's content checksum when the frame has one.

use std::io::{self, BufRead, Read};

use ruzstd::decoding::errors::{FrameDecoderError, ReadFrameHeaderError};
use ruzstd::decoding::{BlockDecodingStrategy, FrameDecoder};

/// A `Read` over the decompressed bytes of every frame in `src`.
pub(super) struct ZstdFrames<R> {
    src: R,
    dec: FrameDecoder,
    in_frame: bool,
}

impl<R: BufRead> ZstdFrames<R> {
    pub(super) fn new(src: R) -> Self {
        Self {
            src,
            dec: FrameDecoder::new(),
            in_frame: false,
        }
    }

    fn verify_checksum(&self) -> io::Result<()> {
        if let (Some(want), Some(got)) = (self.dec.get_checksum_from_data(), self.dec.get_calculated_checksum()) {
            if want != got {
                return Err(invalid(format!(
                    "zstd frame checksum mismatch (stored {want:#010x}, computed {got:#010x})"
                )));
            }
        }
        Ok(())
    }
}

fn invalid(msg: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

impl<R: BufRead> Read for ZstdFrames<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            if !self.in_frame {
                if self.src.fill_buf()?.is_empty() {
                    return Ok(0);
                }
                match self.dec.reset(&mut self.src) {
                    Ok(()) => self.in_frame = true,
                    Err(FrameDecoderError::ReadFrameHeaderError(ReadFrameHeaderError::SkipFrame {
                        length, ..
                    })) => {
                        let want = u64::from(length);
                        let got = io::copy(&mut (&mut self.src).take(want), &mut io::sink())?;
                        if got != want {
                            return Err(io::Error::new(
                                io::ErrorKind::UnexpectedEof,
                                "truncated zstd skippable frame",
                            ));
                        }
                    }
                    Err(e) => return Err(invalid(format!("zstd: {e}"))),
                }
                continue;
            }
            if self.dec.can_collect() == 0 {
                if self.dec.is_finished() {
                    self.verify_checksum()?;
                    self.in_frame = false;
                    continue;
                }
                self.dec
                    .decode_blocks(&mut self.src, BlockDecodingStrategy::UptoBlocks(1))
                    .map_err(|e| invalid(format!("zstd: {e}")))?;
                continue;
            }
            return self.dec.read(buf);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ruzstd::encoding::{compress_to_vec, CompressionLevel};

    fn decode(data: &[u8]) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        ZstdFrames::new(io::BufReader::new(data)).read_to_end(&mut out)?;
        Ok(out)
    }

    #[test]
    fn decodes_several_frames_and_skippable_frames() {
        let a: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let b = b"second frame".to_vec();
        let mut stream = compress_to_vec(&a[..], CompressionLevel::Fastest);
        // A skippable frame: magic 0x184D2A50, little-endian length, payload.
        stream.extend_from_slice(&0x184D_2A50u32.to_le_bytes());
        stream.extend_from_slice(&5u32.to_le_bytes());
        stream.extend_from_slice(b"skip!");
        stream.extend(compress_to_vec(&b[..], CompressionLevel::Fastest));
        let mut want = a;
        want.extend_from_slice(&b);
        assert_eq!(decode(&stream).unwrap(), want);
    }

    #[test]
    fn empty_input_is_empty_output() {
        assert!(decode(&[]).unwrap().is_empty());
    }

    #[test]
    fn garbage_and_truncation_are_errors() {
        assert!(decode(b"\x28\xb5\x2f\xfd garbage garbage").is_err());
        let full = compress_to_vec(&[1u8; 100_000][..], CompressionLevel::Fastest);
        assert!(decode(&full[..full.len() / 2]).is_err());
    }
}
