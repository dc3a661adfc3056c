//! # wulfpack
//!
//! Stateless HPC cluster provisioning in the manner of Warewulf v4, with several
//! peer head nodes that replicate all configuration through Raft.
//!
//! # Layout
//!
//! Modules depend downward only: a module uses only those listed before it in this
//! table (a test, `layering_is_true`, reads `src/**` and fails on any other import).
//!
//! | module | job |
//! |---|---|
//! | [`error`] | one error classification ([`error::ErrorKind`]) and the one place kinds become gRPC/HTTP codes; the display policy |
//! | [`logging`] | log output of the binaries: text or JSON lines, colour only on a terminal |
//! | [`pki`] | the cluster CA, certificates naming who and what role, join tokens; rustls configurations and mutual-TLS transport for tonic |
//! | [`model`] | nodes and profiles (nodes.conf YAML), merge with value origins, validation, hostlists, field patches |
//! | [`state`] | the pure replicated state machine: commands, queries, versions, exactly-once |
//! | [`store`] | sled-backed Raft log, vote and state-machine snapshots (openraft storage v2) |
//! | [`cas`] | content-addressed blobs: atomic writes, verified reads, serving by `sendfile` (Range, ETag), peer fetch over HTTP, GC |
//! | [`pb`] | generated gRPC code (`proto/`) |
//! | [`raft`] | openraft type config, timing, tonic transport between heads |
//! | [`cluster`] | the in-process cluster handle: writes and reads with leader forwarding and deadlines, members, head status |
//! | [`image`] | OCI import, safe layer application, kernel detection, cpio.gz build; head-side image operations |
//! | [`overlay`] | overlay trees and their catalog, `.ww` templates rendered with Warewulf's data and functions, per-node cpio.gz archives |
//! | [`agent`] | `wwclient`, the node agent: fetches the runtime overlay from the heads of its rack and applies it atomically |
//! | [`boot`] | the boot data plane: an immutable `BootView` that DHCP/TFTP/HTTP read; DHCP leases through the cluster handle |
//! | [`power`] | IPMI power and sensors: `ipmitool` per node with its own deadline (password by environment), run by the head of the node's rack |
//! | [`sim`] | `wwsim`: simulated nodes (PXE ROM DHCP and TFTP, iPXE DHCP and script, `wwclient` refreshes) for storms against real heads |
//! | [`api`] | the admin gRPC service: a thin adapter over the cluster handle, images and status |
//! | [`client`] | admin API client with head failover and hedging (used by `wwctl`, tests, benchmarks) |
//! | [`daemon`] | a head: validated config, gRPC/HTTP servers, Raft start-up behind a "starting" gate, background tasks, bootstrap |
//! | [`cli`] | `wwctl`: Warewulf-style verbs and flags, tables/YAML/JSON output |
//!
//! Binaries in `src/bin/` only parse arguments and call into [`daemon`], [`cli`],
//! [`agent`] (`wwclient`) or [`sim`] (`wwsim`).

// openraft's error types (StorageError, RPCError, ConfigError) are large and fixed by
// its trait signatures; boxing them at every call would only add noise.
#![allow(clippy::result_large_err)]
#![warn(unreachable_pub, missing_debug_implementations, unused_qualifications)]

pub mod cas;
pub mod error;
pub mod logging;
pub mod model;
pub mod pki;
pub mod state;
pub mod store;
pub mod pb {
    //! Generated from `proto/`.
    #![allow(
        clippy::all,
        missing_docs,
        unused_qualifications,
        unreachable_pub,
        missing_debug_implementations
    )]
    pub mod raft {
        tonic::include_proto!("wulfpack.raft.v1");
    }
    pub mod admin {
        tonic::include_proto!("wulfpack.admin.v1");
    }
}
pub mod agent;
pub mod api;
pub mod boot;
pub mod cli;
pub mod client;
pub mod cluster;
pub mod daemon;
pub mod image;
pub mod overlay;
pub mod power;
pub mod raft;
pub mod sim;
