//! wulfpack's integration tests: one binary, several modules.
mod harness;

mod cli;
mod cluster;
mod procs;
