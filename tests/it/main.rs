//! wulfpack's integration tests: one binary, several modules.
mod harness;
#[path = "../common/proc_cluster.rs"]
mod proc_cluster;

mod cli;
mod cluster;
mod procs;
