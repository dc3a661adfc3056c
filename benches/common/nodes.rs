//! The node the benchmarks load by the thousand: `default` profile, an image, one
//! network device with a MAC and an address unique per index.

use wulfpack::model::{NetDev, NodeConf};

/// Node number `i`.
pub fn node(i: usize) -> NodeConf {
    let mut c = NodeConf {
        profiles: vec!["default".into()],
        image_name: Some("rocky-9".into()),
        ..Default::default()
    };
    c.network_devices.insert(
        "default".into(),
        NetDev {
            hwaddr: Some(format!(
                "52:54:{:02x}:{:02x}:{:02x}:{:02x}",
                (i >> 24) & 255,
                (i >> 16) & 255,
                (i >> 8) & 255,
                i & 255
            )),
            ipaddr: Some(format!("10.{}.{}.{}", 100 + (i >> 16), (i >> 8) & 255, i & 255)),
            device: Some("eth0".into()),
            ..Default::default()
        },
    );
    c
}
