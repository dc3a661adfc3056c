//! One `cpio` newc archive in one gzip member: written for a node, read by `wwclient`.
