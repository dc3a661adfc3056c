//! The `default` profile a new cluster starts with: the one Warewulf 4.7 ships in its
//! `etc/nodes.conf`, field for field.
//!
//! Design notes:
//! - One source. `wwctl genconfig defaults` prints it, and the head that records a new
//!   cluster's name puts it into the `Init` command it proposes, so every head creates
//!   the same profile and replaying a log gives what the leader wrote (a change here
//!   never changes a cluster that already exists).
//! - Written as nodes.conf YAML, parsed by the same strict parser as an import: what an
//!   operator reads here is what `wwctl profile list -a default` shows.
//! - Warewulf's list names `ifupdown`, its `debian.interfaces` overlay's new name (4.6);
//!   both ship in `cluster/overlays/`. `syncuser` is not in Warewulf's shipped profile
//!   (only `upgrade nodes --add-defaults` adds it), so it is not here either.

use super::{parse_node_conf, NodeConf};

/// The profile as nodes.conf YAML (the body under `nodeprofiles: default:`).
pub const DEFAULT_PROFILE_YAML: &str = "\
comment: This profile is automatically included for each node
runtime overlay:
  - hosts
  - ssh.authorized_keys
system overlay:
  - wwinit
  - wwclient
  - hosts
  - fstab
  - hostname
  - ssh.host_keys
  - issue
  - resolv
  - udev.netname
  - systemd.netname
  - ifcfg
  - ifupdown
  - NetworkManager
  - wicked
  - ignition
kernel:
  args:
    - quiet
    - crashkernel=no
    - net.ifnames=1
init: /sbin/init
root: initramfs
ipxe template: default
ipmi:
  template: ipmitool.tmpl
resources:
  fstab:
    - spec: warewulf:/home
      file: /home
      vfstype: nfs
      mntops: defaults,nofail
    - spec: warewulf:/opt
      file: /opt
      vfstype: nfs
      mntops: defaults,noauto,nofail,ro
";

/// The comment of the `default` profile (also of the one clusters created before the
/// profile's content travelled in `Init`).
pub const DEFAULT_PROFILE_COMMENT: &str = "This profile is automatically included for each node";

/// Warewulf 4.7's shipped `default` profile.
pub fn default_profile() -> NodeConf {
    parse_node_conf(DEFAULT_PROFILE_YAML).expect("the built-in default profile is valid nodes.conf YAML (tested)")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_profile_parses_and_validates() {
        let p = default_profile();
        crate::model::validate_profile_conf("default", &p).unwrap();
        assert_eq!(p.comment.as_deref(), Some(DEFAULT_PROFILE_COMMENT));
        assert_eq!(p.runtime_overlay, ["hosts", "ssh.authorized_keys"]);
        assert_eq!(p.system_overlay.len(), 15);
        assert_eq!(p.system_overlay[..2], ["wwinit", "wwclient"]);
        assert_eq!(p.kernel.unwrap().args, ["quiet", "crashkernel=no", "net.ifnames=1"]);
        assert_eq!(p.ipmi.unwrap().template.as_deref(), Some("ipmitool.tmpl"));
        let fstab = p.resources["fstab"].as_array().unwrap();
        assert_eq!(fstab.len(), 2);
        assert_eq!(fstab[1]["mntops"], "defaults,noauto,nofail,ro");
    }

    /// Every overlay the profile names ships with wulfpack, so a new cluster's nodes
    /// build without an operator creating any.
    #[test]
    fn every_overlay_it_names_ships() {
        let p = default_profile();
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("cluster/overlays");
        for o in p.system_overlay.iter().chain(&p.runtime_overlay) {
            assert!(dir.join(o).is_dir(), "overlay {o} is not in cluster/overlays");
        }
    }
}
