//! wulfpack's integration tests: one binary, several modules.
mod harness;
#[path = "../common/netns.rs"]
mod netns;
#[path = "../common/proc_cluster.rs"]
mod proc_cluster;
#[path = "../common/registry.rs"]
mod registry;

mod boot_http;
mod cli;
mod cluster;
mod images;
mod oci;
mod procs;
mod tftp;
