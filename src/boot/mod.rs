//! # Boot data plane
//!
//! Each head serves the provisioning protocols itself (DHCP, TFTP, HTTP boot) from
//! an immutable [`view::BootView`]; per-node boot status lives in each head's memory.
//!
//! | part | job |
//! |---|---|
//! | [`view`] | merged nodes by MAC/IP, images, heads; republished after applies |

pub mod view;
