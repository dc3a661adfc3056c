//! Whiteouts (`.wh.NAME`, `.wh..wh..opq`): remove only what lower layers put there (see the module doc of
//! `layers`).

use std::ffi::OsStr;
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use rustix::fs::{self as rfs, FileType};

use super::applier::Applier;
use super::tree::{self, list, lstat_at, parent_of, WalkError};
use super::LayerError;

impl Applier<'_> {
    // ----- whiteouts -----

    pub(super) fn whiteout(&mut self, rel: &Path, name: &str) -> Result<(), LayerError> {
        let dir = parent_of(rel);
        let base = rel.file_name().unwrap_or_default().as_bytes();
        if base == b".wh..wh..opq" {
            // The directory is part of this layer (opaque); everything lower layers put in it goes.
            self.open_dir_create(dir, name)?;
            self.mark_created(dir);
            return self.clear_lower(dir, name);
        }
        let victim = &base[4..];
        match victim {
            b"" => return Err(self.malformed(name, "a \".wh.\" whiteout must name the file it removes")),
            b"." | b".." => return Err(self.malformed(name, "a whiteout cannot remove \".\" or \"..\"")),
            _ => {}
        }
        let target = dir.join(OsStr::from_bytes(victim));
        let parent = match self.tree.open_dir(dir, false) {
            Ok(fd) => fd,
            // Nothing there to remove: a whiteout of a path that does not exist is a no-op.
            Err(WalkError::Missing(_)) | Err(WalkError::NotDir(_)) => return Ok(()),
            Err(e) => return Err(self.walk_error(name, e)),
        };
        if !self.created.contains(&target) {
            return self
                .tree
                .remove(parent.as_fd(), OsStr::from_bytes(victim), &target)
                .map_err(|e| self.io(name, &format!("remove {:?}", target.display()), e));
        }
        // The same layer wrote this path: keep it, drop only what lower layers put beneath it.
        if lstat_at(parent.as_fd(), OsStr::from_bytes(victim)).ok().flatten() == Some(FileType::Directory) {
            self.clear_lower(&target, name)?;
        } else {
            tracing::debug!(
                layer = self.layer,
                entry = name,
                "whiteout names a path this layer wrote; kept"
            );
        }
        Ok(())
    }

    /// Remove everything under `dir` that this layer did not write (descending into directories it did).
    fn clear_lower(&mut self, dir: &Path, name: &str) -> Result<(), LayerError> {
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            let fd = match self.tree.open_dir(&d, false) {
                Ok(fd) => fd,
                Err(WalkError::Missing(_)) | Err(WalkError::NotDir(_)) => continue,
                Err(e) => return Err(self.walk_error(name, e)),
            };
            let restore = tree::ensure_owner_rwx(fd.as_fd());
            let children = list(fd.as_fd()).map_err(|e| self.io(name, &format!("list {:?}", d.display()), e))?;
            for child in children {
                let child_rel = d.join(&child);
                if self.created.contains(&child_rel) {
                    if lstat_at(fd.as_fd(), &child).ok().flatten() == Some(FileType::Directory) {
                        stack.push(child_rel);
                    }
                } else {
                    self.tree
                        .remove(fd.as_fd(), &child, &child_rel)
                        .map_err(|e| self.io(name, &format!("remove {:?}", child_rel.display()), e))?;
                }
            }
            if let Some(mode) = restore {
                let _ = rfs::fchmod(&fd, mode);
            }
        }
        Ok(())
    }
}
