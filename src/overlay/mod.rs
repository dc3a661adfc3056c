//! # Overlays
//!
//! An overlay is a small file tree laid over a node's image: Warewulf's way of making
//! one image serve thousands of different nodes. Files whose name ends in `.ww` are
//! templates, rendered per node (the suffix dropped, mode and owner kept); the others
//! are copied as they are. A node has *system* overlays (built once at boot, unpacked
//! by the kernel over the image) and *runtime* overlays (fetched again by `wwclient`
//! every update interval while the node runs).
//!
//! How the parts fit:
//!
//! | part | job |
//! |---|---|
//! | [`tree`] | an overlay's files as a value: validated relative paths, modes, owners, symlinks; nothing escapes the overlay |
//! | [`store`] | overlay trees as CAS blobs, the catalog (name → digest, distribution or site) in Raft, the distribution set shipped in `cluster/overlays/` |
//! | [`render`] | `.ww` templates rendered with Tera over Warewulf's template data and functions |
//! | [`archive`] | one `cpio` newc archive in one gzip member, written and read (the node agent unpacks it) |
//! | [`build`] | a node's system or runtime overlays rendered and packed, cached by the digest of what they read |
//!
//! Rendering reads only values (a node already merged with its profiles, the cluster's
//! settings, the other nodes), never Raft or sled, so the boot side can build overlays
//! from its immutable view.

pub mod archive;
pub mod build;
pub mod render;
pub mod store;
pub mod tree;
