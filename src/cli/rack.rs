//! `wwctl rack add|set|list|delete`: racks and the ordered heads that serve them.
//!
//! A rack is written whole (the state machine validates it whole), so `set` reads the
//! rack, changes the fields given and writes it back conditional on the version it read:
//! of two operators changing one rack at once, one gets a conflict instead of silently
//! losing the other's change.

use std::io::Write;
use std::net::Ipv4Addr;

use anyhow::{anyhow, bail, Context, Result};
use clap::{Args, Subcommand};

use super::output::{table, Format};
use crate::client::Client;
use crate::state::{Command, Query, Rack, RackCommand, RackHead, RackPool, Selector};

#[derive(Subcommand, Debug)]
pub enum RackCmd {
    /// Create a rack: its network and the heads that serve it, first preferred.
    Add {
        name: String,
        #[command(flatten)]
        fields: RackFields,
    },
    /// Change a rack (only the fields given).
    Set {
        name: String,
        #[command(flatten)]
        fields: RackFields,
    },
    /// List racks (with -a: every field).
    #[command(alias = "ls")]
    List {
        /// Only these racks.
        names: Vec<String>,
        /// Show every field, one rack per block.
        #[arg(short, long)]
        all: bool,
    },
    /// Delete racks. Refused while nodes have addresses in them, unless --force.
    #[command(alias = "rm")]
    Delete {
        #[arg(required = true)]
        names: Vec<String>,
        /// Delete even if nodes have addresses in the rack (they get no DHCP answer).
        #[arg(long)]
        force: bool,
    },
}

/// The fields of `add` and `set`.
#[derive(Args, Debug, Default)]
pub struct RackFields {
    /// Boot network of the rack (CIDR); nodes with an address inside belong to it.
    #[arg(long)]
    network: Option<String>,
    /// A head serving the rack as ID=ADDRESS (its address on the rack, or for a relayed
    /// rack the address the relay forwards to). Repeat in order of preference; replaces
    /// the whole list on `set`.
    #[arg(long = "head", id = "rack_head", value_name = "ID=ADDRESS")]
    heads: Vec<String>,
    /// Requests arrive through a DHCP relay (giaddr in the rack's network).
    #[arg(long, num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    relayed: Option<bool>,
    /// Gateway handed to nodes (DHCP option 3); "" removes it.
    #[arg(long)]
    router: Option<String>,
    /// DNS servers handed to nodes, comma separated; "" removes them.
    #[arg(long)]
    dns: Option<String>,
    /// Domain handed to nodes (option 15); "" removes it.
    #[arg(long)]
    domain: Option<String>,
    /// Lease time (humantime: 2h, 90m, or seconds); "" for the default (2 h).
    #[arg(long)]
    lease_time: Option<String>,
    /// Pool for unknown MACs as START-END; "" removes it.
    #[arg(long)]
    pool: Option<String>,
}

fn ip(flag: &str, s: &str) -> Result<Ipv4Addr> {
    s.trim()
        .parse()
        .map_err(|_| anyhow!("--{flag}: {s:?} is not an IPv4 address"))
}

fn parse_head(s: &str) -> Result<RackHead> {
    let (id, addr) = s
        .split_once('=')
        .ok_or_else(|| anyhow!("--head {s:?}: write ID=ADDRESS, e.g. --head 1=10.10.0.1"))?;
    let id: u64 = id
        .trim()
        .parse()
        .map_err(|_| anyhow!("--head {s:?}: {id:?} is not a head id (see `wwctl cluster status`)"))?;
    Ok(RackHead {
        id,
        addr: ip("head", addr)?,
    })
}

impl RackFields {
    /// Apply the given fields to `r`.
    fn apply(&self, r: &mut Rack) -> Result<()> {
        if let Some(n) = &self.network {
            r.network = n
                .trim()
                .parse()
                .map_err(|_| anyhow!("--network: {n:?} is not an IPv4 CIDR like 10.10.0.0/24"))?;
        }
        if !self.heads.is_empty() {
            r.heads = self.heads.iter().map(|h| parse_head(h)).collect::<Result<_>>()?;
        }
        if let Some(b) = self.relayed {
            r.relayed = b;
        }
        if let Some(s) = &self.router {
            r.router = if s.is_empty() { None } else { Some(ip("router", s)?) };
        }
        if let Some(s) = &self.dns {
            r.dns = s
                .split(',')
                .filter(|x| !x.trim().is_empty())
                .map(|x| ip("dns", x))
                .collect::<Result<_>>()?;
        }
        if let Some(s) = &self.domain {
            r.domain = (!s.is_empty()).then(|| s.clone());
        }
        if let Some(s) = &self.lease_time {
            r.lease_secs = if s.is_empty() {
                None
            } else {
                let secs = match s.trim().parse::<u64>() {
                    Ok(n) => n,
                    Err(_) => humantime::parse_duration(s.trim())
                        .map_err(|e| anyhow!("--lease-time {s:?}: {e}; write e.g. 2h, 90m or 3600"))?
                        .as_secs(),
                };
                Some(
                    u32::try_from(secs)
                        .ok()
                        .filter(|&n| n >= 60)
                        .ok_or_else(|| anyhow!("--lease-time {s:?}: give between 60 s and 136 years"))?,
                )
            };
        }
        if let Some(s) = &self.pool {
            r.pool = if s.is_empty() {
                None
            } else {
                let (a, b) = s
                    .split_once('-')
                    .ok_or_else(|| anyhow!("--pool {s:?}: write START-END, e.g. 10.10.0.200-10.10.0.250"))?;
                Some(RackPool {
                    start: ip("pool", a)?,
                    end: ip("pool", b)?,
                })
            };
        }
        Ok(())
    }
}

pub async fn run(client: &Client, cmd: RackCmd, fmt: Option<Format>, out: &mut dyn Write) -> Result<()> {
    match cmd {
        RackCmd::Add { name, fields } => {
            let Some(net) = &fields.network else {
                bail!("rack add {name}: give the rack's network with --network CIDR");
            };
            if fields.heads.is_empty() {
                bail!("rack add {name}: give the heads that serve it with --head ID=ADDRESS (repeat, first preferred)");
            }
            let mut rack = Rack {
                network: net
                    .parse()
                    .map_err(|_| anyhow!("--network: {net:?} is not an IPv4 CIDR like 10.10.0.0/24"))?,
                relayed: false,
                router: None,
                dns: Vec::new(),
                domain: None,
                lease_secs: None,
                pool: None,
                heads: Vec::new(),
            };
            fields.apply(&mut rack)?;
            client
                .write(Command::Rack(RackCommand::Put {
                    name: name.clone(),
                    rack,
                    expect: Some(0),
                }))
                .await?;
            writeln!(out, "Added rack {name}")?;
        }
        RackCmd::Set { name, fields } => {
            let racks = read(client).await?;
            let cur = racks
                .get(&name)
                .ok_or_else(|| anyhow!("rack {name:?} does not exist; create it with `wwctl rack add`"))?;
            let mut rack = cur.value.clone();
            fields.apply(&mut rack)?;
            if rack == cur.value {
                writeln!(out, "Rack {name} unchanged")?;
                return Ok(());
            }
            client
                .write(Command::Rack(RackCommand::Put {
                    name: name.clone(),
                    rack,
                    expect: Some(cur.version),
                }))
                .await?;
            writeln!(out, "Changed rack {name}")?;
        }
        RackCmd::Delete { names, force } => {
            for name in names {
                client
                    .write(Command::Rack(RackCommand::Delete {
                        name: name.clone(),
                        force,
                    }))
                    .await
                    .with_context(|| format!("deleting rack {name}"))?;
                writeln!(out, "Deleted rack {name}")?;
            }
        }
        RackCmd::List { names, all } => {
            let racks = read(client).await?;
            for n in &names {
                if !racks.contains_key(n) {
                    bail!("rack {n:?} does not exist; see `wwctl rack list`");
                }
            }
            let shown: Vec<(&String, &Rack)> = racks
                .iter()
                .filter(|(n, _)| names.is_empty() || names.contains(n))
                .map(|(n, r)| (n, &r.value))
                .collect();
            out.write_all(list(&shown, all, fmt.unwrap_or(Format::Table))?.as_bytes())?;
        }
    }
    Ok(())
}

async fn read(client: &Client) -> Result<std::collections::BTreeMap<String, crate::state::Versioned<Rack>>> {
    // Linearizable: `set` writes back conditional on what it read.
    let q = Query::nodes(Selector::None);
    Ok(client.read(&q, true).await?.cluster.racks)
}

fn heads_text(r: &Rack) -> String {
    r.heads
        .iter()
        .map(|h| format!("{}={}", h.id, h.addr))
        .collect::<Vec<_>>()
        .join(",")
}

/// The `rack list` output.
pub fn list(racks: &[(&String, &Rack)], all: bool, fmt: Format) -> Result<String> {
    Ok(match fmt {
        Format::Json => {
            let m: std::collections::BTreeMap<&String, &Rack> = racks.iter().copied().collect();
            serde_json::to_string_pretty(&m)? + "\n"
        }
        Format::Yaml => {
            let m: std::collections::BTreeMap<&String, &Rack> = racks.iter().copied().collect();
            serde_yaml_ng::to_string(&m)?
        }
        Format::Table if all => {
            let mut rows = Vec::new();
            for (n, r) in racks {
                let opt = |o: Option<String>| o.unwrap_or_else(|| "--".into());
                for (field, value) in [
                    ("Network", r.network.to_string()),
                    ("Relayed", r.relayed.to_string()),
                    ("Heads", heads_text(r)),
                    ("Router", opt(r.router.map(|a| a.to_string()))),
                    (
                        "Dns",
                        if r.dns.is_empty() {
                            "--".into()
                        } else {
                            r.dns.iter().map(|a| a.to_string()).collect::<Vec<_>>().join(",")
                        },
                    ),
                    ("Domain", opt(r.domain.clone())),
                    ("LeaseTime", opt(r.lease_secs.map(|s| format!("{s}s")))),
                    ("Pool", opt(r.pool.map(|p| format!("{}-{}", p.start, p.end)))),
                ] {
                    rows.push(vec![n.to_string(), field.to_owned(), value]);
                }
            }
            table(&["RACK", "FIELD", "VALUE"], rows)
        }
        Format::Table => table(
            &["RACK", "NETWORK", "RELAYED", "HEADS"],
            racks.iter().map(|(n, r)| {
                vec![
                    n.to_string(),
                    r.network.to_string(),
                    r.relayed.to_string(),
                    heads_text(r),
                ]
            }),
        ),
    })
}
