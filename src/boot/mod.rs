//! # Boot data plane
//!
//! Each head serves the provisioning protocols itself (DHCP, TFTP, HTTP boot) from
//! an immutable [`view::BootView`]; per-node boot status lives in each head's memory.
//!
//! | part | job |
//! |---|---|
//! | [`view`] | merged nodes by MAC/IP, images, heads; republished after applies |
//! | [`dhcp`] | built-in DHCPv4 server: config, sans-IO handler chain, per-interface sockets |

pub mod dhcp;
pub mod view;
