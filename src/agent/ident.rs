//! Who this node is: its `wwid` (a MAC) and SMBIOS UUID.
//!
//! Warewulf's iPXE script puts `wwid=${mac}` on the kernel command line; that is the
//! first source. Without it (a node booted some other way) the boot interface's MAC:
//! pxelinux's `BOOTIF=01-aa-bb-…` if present, else the interface of the IPv4 default
//! route, else the first interface (by name) with a non-zero MAC.

use std::path::Path;

/// A MAC in Warewulf's form: lower case, `:`-separated (the heads normalise the same way).
pub fn normalize(raw: &str) -> String {
    raw.trim().replace('-', ":").to_lowercase()
}

/// `wwid=` (or pxelinux's `BOOTIF=01-…`) from a kernel command line.
pub fn wwid_from_cmdline(cmdline: &str) -> Option<String> {
    let mut bootif = None;
    for tok in cmdline.split_whitespace() {
        if let Some(v) = tok.strip_prefix("wwid=") {
            let v = v.trim_matches('"');
            if !v.is_empty() {
                return Some(normalize(v));
            }
        } else if let Some(v) = tok.strip_prefix("BOOTIF=") {
            // ARP type 01 (Ethernet), then the MAC.
            let v = v.strip_prefix("01-").unwrap_or(v);
            if !v.is_empty() {
                bootif = Some(normalize(v));
            }
        }
    }
    bootif
}

/// The MAC of the boot interface from `/proc/net/route` and `/sys/class/net` (paths
/// given, so tests can point them at a fake tree).
pub fn mac_of_boot_interface(proc_net_route: &Path, sys_class_net: &Path) -> Option<String> {
    let mac_of = |ifname: &str| -> Option<String> {
        let m = std::fs::read_to_string(sys_class_net.join(ifname).join("address")).ok()?;
        let m = normalize(&m);
        (m.len() == 17 && m != "00:00:00:00:00:00").then_some(m)
    };
    // Default route: destination 00000000.
    if let Ok(routes) = std::fs::read_to_string(proc_net_route) {
        for line in routes.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() > 2 && f[1] == "00000000" {
                if let Some(m) = mac_of(f[0]) {
                    return Some(m);
                }
            }
        }
    }
    let mut names: Vec<String> = std::fs::read_dir(sys_class_net)
        .ok()?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n != "lo")
        .collect();
    names.sort();
    names.iter().find_map(|n| mac_of(n))
}

/// The SMBIOS product UUID (readable by root), sent as `uuid=` for the head's status.
pub fn smbios_uuid() -> Option<String> {
    let u = std::fs::read_to_string("/sys/class/dmi/id/product_uuid").ok()?;
    Some(u.trim().to_lowercase()).filter(|u| !u.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wwid_from_the_command_line() {
        assert_eq!(
            wwid_from_cmdline("quiet wwid=AA-BB-CC-DD-EE-0F init=/init\n").as_deref(),
            Some("aa:bb:cc:dd:ee:0f")
        );
        assert_eq!(
            wwid_from_cmdline("BOOTIF=01-aa-bb-cc-dd-ee-ff ro").as_deref(),
            Some("aa:bb:cc:dd:ee:ff")
        );
        // wwid= wins over BOOTIF= wherever it is.
        assert_eq!(
            wwid_from_cmdline("BOOTIF=01-aa-bb-cc-dd-ee-ff wwid=11:22:33:44:55:66").as_deref(),
            Some("11:22:33:44:55:66")
        );
        assert_eq!(wwid_from_cmdline("ro quiet wwid="), None);
    }

    #[test]
    fn mac_of_the_default_route_interface_else_the_first_interface() {
        let d = tempfile::tempdir().unwrap();
        let sys = d.path().join("net");
        for (n, mac) in [
            ("lo", "00:00:00:00:00:00"),
            ("eth0", "52:54:00:00:00:01"),
            ("eth1", "52:54:00:00:00:02"),
        ] {
            std::fs::create_dir_all(sys.join(n)).unwrap();
            std::fs::write(sys.join(n).join("address"), format!("{mac}\n")).unwrap();
        }
        let route = d.path().join("route");
        std::fs::write(
            &route,
            "Iface\tDestination\tGateway\tFlags\n eth0\t0002000A\t00000000\t0001\neth1\t00000000\t0100000A\t0003\n",
        )
        .unwrap();
        assert_eq!(
            mac_of_boot_interface(&route, &sys).as_deref(),
            Some("52:54:00:00:00:02")
        );
        assert_eq!(
            mac_of_boot_interface(&d.path().join("none"), &sys).as_deref(),
            Some("52:54:00:00:00:01")
        );
    }
}
