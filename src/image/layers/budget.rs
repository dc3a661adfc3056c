//! The cap on extension headers the `tar` crate buffers in memory (the module doc's "Streaming" point).

use std::cell::Cell;
use std::io::{self, Read};
use std::rc::Rc;

/// Most bytes of extension headers (PAX records, GNU long names, sparse maps) allowed before one entry.
/// The `tar` crate reads these into memory, so a hostile layer could otherwise claim a multi-gigabyte header.
pub const HEADER_BUDGET: u64 = 16 * 1024 * 1024;

/// Caps the bytes the `tar` crate may read while it parses headers (see [`HEADER_BUDGET`]).
/// `budget` is `Some(remaining)` only while `Entries::next` runs.
pub(super) struct HeaderBudget<R> {
    pub(super) inner: R,
    pub(super) budget: Rc<Cell<Option<u64>>>,
}

impl<R: Read> Read for HeaderBudget<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self.budget.get() {
            None => self.inner.read(buf),
            Some(0) if !buf.is_empty() => Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "tar extension headers (PAX records / GNU long names) exceed {} MiB for one entry",
                    HEADER_BUDGET >> 20
                ),
            )),
            Some(left) => {
                let cap = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
                let n = self.inner.read(&mut buf[..cap])?;
                self.budget.set(Some(left - n as u64));
                Ok(n)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_budget_caps_reads() {
        let budget = Rc::new(Cell::new(Some(10)));
        let mut r = HeaderBudget {
            inner: &[7u8; 100][..],
            budget: Rc::clone(&budget),
        };
        let mut buf = [0u8; 64];
        assert_eq!(r.read(&mut buf).unwrap(), 10);
        assert!(r.read(&mut buf).is_err());
        budget.set(None);
        assert_eq!(r.read(&mut buf).unwrap(), 64);
    }
}
