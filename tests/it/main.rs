//! wulfpack's integration tests: one binary, several modules.
#[path = "../common/dhclient.rs"]
mod dhclient;
#[path = "../common/dhcp_lab.rs"]
mod dhcp_lab;
mod harness;
#[path = "../common/lab_heads.rs"]
mod lab_heads;
#[path = "../common/netns.rs"]
mod netns;
#[path = "../common/netns_pair.rs"]
mod netns_pair;
#[path = "../common/proc_cluster.rs"]
mod proc_cluster;
#[path = "../common/qemu_node.rs"]
mod qemu_node;
#[path = "../common/rack_lab.rs"]
mod rack_lab;
#[path = "../common/rack_qemu_lab.rs"]
mod rack_qemu_lab;
#[path = "../common/registry.rs"]
mod registry;
#[path = "../common/sim_lab.rs"]
mod sim_lab;
#[path = "../common/tftp_client.rs"]
mod tftp_client;

mod allow;
mod artifacts;
mod boot_http;
mod boot_limits;
mod chaos_bootcheck;
mod chaos_checker;
mod cli;
mod cli_verbs;
mod cluster;
mod dhcp;
mod dhcp_ifaces;
mod dhcp_relay;
mod fuzz_http;
mod hung;
mod images;
mod include_from;
mod ipmi;
mod layering;
mod membership;
mod names;
mod oci;
mod overlay_boot;
mod overlay_net;
mod overlay_qemu;
mod overlay_render;
mod overlays;
mod procs;
mod pxe;
mod rack_ha;
mod rack_qemu;
mod raft_golden;
mod raft_ops;
mod ssh_keys;
mod syncuser;
mod tftp;
mod tls;
mod wwclient;
mod wwsim;
