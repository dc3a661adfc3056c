//! # Boot data plane
//!
//! Each head serves the provisioning protocols itself (DHCP, TFTP, HTTP boot) from
//! an immutable [`view::BootView`]; per-node boot status lives in each head's memory.
//!
//! | part | job |
//! |---|---|
//! | [`view`] | merged nodes by MAC/IP, images, heads; republished after applies |
//! | [`dhcp`] | built-in DHCPv4 server: config, sans-IO handler chain, per-interface sockets |
//! | [`liveness`] | which peer heads are alive and serve which racks (HTTP probes), for DHCP's rack turn |
//! | [`allow`] | which clients the boot side answers (rack networks, DHCP subnets, `boot.allow`) |
//! | [`limit`] | transfers in flight per client address (TFTP and HTTP boot), refusals logged per client |
//! | [`files`] | the iPXE binary directory, contained; read by TFTP and HTTP `/efiboot/` |
//! | [`tftp`] | read-only TFTP of the iPXE binaries (windowed; a thread per transfer, blocking on its own socket) |
//! | [`http`] | Warewulf's boot routes: iPXE scripts (Tera), kernels and images sent from the CAS (sendfile), `/status` |
//! | [`overlays`] | nodes' system and runtime overlay archives, built from the view on first request and cached |
//! | [`status`] | per-node boot status in this head's memory |
//! | [`retry`] | `retry_every`: the head's one "retry every 2 s, log once" loop (binds, registration) |

pub mod allow;
pub mod dhcp;
pub mod files;
pub mod http;
pub mod limit;
pub mod liveness;
pub mod overlays;
pub mod retry;
pub mod status;
pub mod tftp;
pub mod view;
