//! # Power: IPMI through `ipmitool`, run by the head that serves the node's rack
//!
//! `wwctl power on|off|cycle|reset|soft|status` and `wwctl node sensors` end here, in
//! one admin call ([`Power::execute`]). Design:
//!
//! - **Which head runs it.** A BMC usually sits on a rack's management network that
//!   only the heads of that rack reach, so the head that received the call sends each
//!   node's share to the *first* head of the node's rack (`wwctl rack`; a node belongs
//!   to the rack whose network holds one of its addresses, as for boot). Nodes without
//!   a rack, or whose rack head is this head, run here. That head is first probed with
//!   a short status call ([`PowerConfig::forward_probe_ms`]): a head that is down or
//!   hung costs that probe, and its nodes then run here, with a note in their results.
//!   Once the rack head has taken the request it is not repeated elsewhere, even if its
//!   answer is lost — a power cycle must not run twice; the results say so instead.
//! - **ipmitool, not a shell.** Warewulf renders a shell command from a template that
//!   carries `-P password`, visible in every process listing. Here the arguments are
//!   built from the node's merged `ipmi` fields (the equivalent of Warewulf's stock
//!   `ipmitool.tmpl`), ipmitool is started without a shell, and the password goes
//!   through the environment (`IPMI_PASSWORD` with `-E`), never argv. Fields are checked
//!   so that none can be taken for an option (a leading `-`).
//! - **Deadlines.** Each ipmitool has its own deadline (the request's `timeout_ms`, cut
//!   to what is left of the call's deadline); on expiry the child is killed
//!   (`kill_on_drop`), so a BMC that does not answer costs its own node that time and
//!   nothing else. At most `fanout` run at once (Warewulf's default 50).
//! - **Per-node results.** A node without an IPMI address, with a bad field or a BMC
//!   that fails gets its own error result; the others still run. Only a request that
//!   names no known node, or an unknown action, fails as a whole.
//!
//! The node data comes from this head's boot view (merged nodes and racks, at most
//! ~100 ms behind its applied log), so power works while Raft has no leader.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde::{Deserialize, Serialize};

use crate::boot::view::{BootNode, BootView};
use crate::cluster::Cluster;
use crate::error::{Classify, ErrorKind};
use crate::model::IpmiConf;
use crate::pb::admin as pb;

/// ipmitool processes at once unless the request says (Warewulf's `--fanout` default).
pub const DEFAULT_FANOUT: usize = 50;
/// Each ipmitool's deadline unless the request says.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(20);
/// The environment variable `ipmitool -E` reads the password from.
pub const PASSWORD_ENV: &str = "IPMI_PASSWORD";
/// Warewulf's stock BMC template; the only one wulfpack knows (see the module doc).
pub const STOCK_TEMPLATE: &str = "ipmitool.tmpl";

/// `power:` in `wulfd.yaml`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PowerConfig {
    /// The ipmitool program (a name looked up in `PATH`, or a path).
    pub ipmitool: PathBuf,
    /// How long the rack's head may take to answer a status probe before this head
    /// runs that rack's nodes itself.
    pub forward_probe_ms: u64,
}

impl Default for PowerConfig {
    fn default() -> Self {
        PowerConfig {
            ipmitool: PathBuf::from("ipmitool"),
            forward_probe_ms: 2000,
        }
    }
}

/// What to do with a node's BMC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    On,
    Off,
    Cycle,
    Reset,
    Soft,
    Status,
    /// `node sensors`: the sensor data repository, one line per sensor.
    Sdr,
    /// `node sensors --full`: every sensor with its thresholds.
    Sensors,
    /// `node console`: serial over LAN (interactive, run by `wwctl` itself).
    Console,
}

impl Action {
    /// Every action a head runs (not `console`), by wire name.
    pub const REMOTE: [Action; 8] = [
        Action::On,
        Action::Off,
        Action::Cycle,
        Action::Reset,
        Action::Soft,
        Action::Status,
        Action::Sdr,
        Action::Sensors,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Action::On => "on",
            Action::Off => "off",
            Action::Cycle => "cycle",
            Action::Reset => "reset",
            Action::Soft => "soft",
            Action::Status => "status",
            Action::Sdr => "sdr",
            Action::Sensors => "sensors",
            Action::Console => "console",
        }
    }

    /// The action a head runs by its wire name (`console` is not one).
    pub fn parse(s: &str) -> Result<Action, PowerError> {
        Action::REMOTE
            .into_iter()
            .find(|a| a.as_str() == s)
            .ok_or_else(|| PowerError::BadAction(s.to_string()))
    }

    /// ipmitool's command words (those of Warewulf's `ipmitool.tmpl`).
    fn words(self) -> &'static [&'static str] {
        match self {
            Action::On => &["chassis", "power", "on"],
            Action::Off => &["chassis", "power", "off"],
            Action::Cycle => &["chassis", "power", "cycle"],
            Action::Reset => &["chassis", "power", "reset"],
            Action::Soft => &["chassis", "power", "soft"],
            Action::Status => &["chassis", "power", "status"],
            Action::Sdr => &["sdr", "list"],
            Action::Sensors => &["sensor", "list"],
            Action::Console => &["sol", "activate"],
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What went wrong, for one node or for the whole request.
#[derive(Debug, thiserror::Error)]
pub enum PowerError {
    #[error("unknown power action {0:?}: use one of on, off, cycle, reset, soft, status, sdr, sensors")]
    BadAction(String),
    #[error("no nodes found among {0}: check the names with `wwctl node list`")]
    NoNodes(String),
    #[error("no IPMI address: set one with `wwctl node set --ipmiaddr ADDR {node}` (or on its profile)")]
    NoAddress { node: String },
    #[error("ipmi {field} {value:?} {why}; fix it with `wwctl node set` (or on its profile)")]
    BadField {
        field: &'static str,
        value: String,
        why: &'static str,
    },
    #[error(
        "BMC template {0:?} is not supported: wulfpack runs ipmitool itself, as Warewulf's `ipmitool.tmpl` does, so that the password never reaches a command line; clear it with `wwctl node set --ipmitemplate UNDEF`"
    )]
    Template(String),
    #[error("head {head} does not know this node yet (its copy of the nodes is behind); try again")]
    NotHere { head: u64 },
    #[error("its profiles do not merge: {0}")]
    Broken(String),
    #[error("cannot start {program}: {source}; install ipmitool on this head or set `power: ipmitool:` in wulfd.yaml")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("no answer from the BMC at {addr} within {secs:.1} s; ipmitool was stopped")]
    Timeout { addr: String, secs: f64 },
    #[error("not started: the call's deadline passed first (try a larger --fanout or --timeout)")]
    Late,
    #[error("ipmitool failed ({status}): {output}")]
    Failed { status: String, output: String },
    #[error("waiting for ipmitool: {0}")]
    Wait(#[source] std::io::Error),
    #[error(
        "head {head} took the request but its answer was lost ({message}); the action may have run: check with `wwctl power status`"
    )]
    Lost { head: u64, message: String },
}

impl Classify for PowerError {
    fn kind(&self) -> ErrorKind {
        match self {
            PowerError::NoNodes(_) => ErrorKind::NotFound,
            PowerError::Spawn { .. } | PowerError::Wait(_) => ErrorKind::Internal,
            PowerError::Timeout { .. } | PowerError::Late | PowerError::Lost { .. } | PowerError::NotHere { .. } => {
                ErrorKind::Unavailable
            }
            _ => ErrorKind::Invalid,
        }
    }
}

/// One BMC as ipmitool addresses it, from a node's merged `ipmi` fields.
#[derive(Clone, PartialEq, Eq)]
pub struct Target {
    pub addr: String,
    pub port: Option<String>,
    pub username: Option<String>,
    password: Option<String>,
    pub interface: Option<String>,
    pub escapechar: Option<String>,
    /// `-C`: the RMCP+ cipher suite, from the ipmi tag `cipher` (a wulfpack extension:
    /// Warewulf users put it in their own template).
    pub cipher: Option<String>,
}

impl fmt::Debug for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Target")
            .field("addr", &self.addr)
            .field("port", &self.port)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "(set)"))
            .field("interface", &self.interface)
            .field("cipher", &self.cipher)
            .finish_non_exhaustive()
    }
}

/// A field's value, unless empty; refused when ipmitool could read it as an option or
/// it holds control characters (no shell is involved, so nothing else is special).
fn field(name: &'static str, v: Option<&String>) -> Result<Option<String>, PowerError> {
    let Some(v) = v.map(|s| s.trim()).filter(|s| !s.is_empty()) else {
        return Ok(None);
    };
    let bad = |why| {
        Err(PowerError::BadField {
            field: name,
            value: v.to_string(),
            why,
        })
    };
    if v.starts_with('-') {
        return bad("starts with '-' (ipmitool would read it as an option)");
    }
    if v.chars().any(char::is_control) {
        return bad("holds control characters");
    }
    Ok(Some(v.to_string()))
}

impl Target {
    /// The BMC of node `node` from its merged `ipmi` fields.
    pub fn from_conf(node: &str, ipmi: Option<&IpmiConf>) -> Result<Target, PowerError> {
        let none = IpmiConf::default();
        let c = ipmi.unwrap_or(&none);
        if let Some(t) = c.template.as_deref().map(str::trim).filter(|t| !t.is_empty()) {
            if t != STOCK_TEMPLATE && !t.ends_with(&format!("/{STOCK_TEMPLATE}")) {
                return Err(PowerError::Template(t.to_string()));
            }
        }
        // Warewulf treats 0.0.0.0 as "no address" too.
        let addr = field("ipaddr", c.ipaddr.as_ref())?
            .filter(|a| a != "0.0.0.0")
            .ok_or_else(|| PowerError::NoAddress { node: node.to_string() })?;
        let port = field("port", c.port.as_ref())?;
        if let Some(p) = &port {
            if p.parse::<u16>().is_err() {
                return Err(PowerError::BadField {
                    field: "port",
                    value: p.clone(),
                    why: "is not a port number",
                });
            }
        }
        let cipher = field("tag cipher", c.tags.get("cipher"))?;
        if let Some(s) = &cipher {
            if s.parse::<u8>().is_err() {
                return Err(PowerError::BadField {
                    field: "tag cipher",
                    value: s.clone(),
                    why: "is not a cipher suite number",
                });
            }
        }
        Ok(Target {
            addr,
            port,
            username: field("username", c.username.as_ref())?,
            // The password is never an argument, so any text is fine.
            password: c.password.clone().filter(|p| !p.is_empty()),
            interface: field("interface", c.interface.as_ref())?,
            escapechar: field("escapechar", c.escapechar.as_ref())?,
            cipher,
        })
    }

    /// The password, for the child's environment only.
    pub fn password(&self) -> Option<&str> {
        self.password.as_deref()
    }

    /// ipmitool's arguments for `action`: Warewulf's `ipmitool.tmpl` order, with `-E`
    /// (password from [`PASSWORD_ENV`]) instead of `-P password`.
    pub fn args(&self, action: Action) -> Vec<String> {
        let mut a: Vec<String> = Vec::new();
        let mut opt = |flag: &str, v: &Option<String>| {
            if let Some(v) = v {
                a.push(flag.into());
                a.push(v.clone());
            }
        };
        opt("-I", &self.interface);
        opt("-C", &self.cipher);
        if action == Action::Console {
            opt("-e", &self.escapechar);
        }
        opt("-p", &self.port);
        opt("-H", &Some(self.addr.clone()));
        opt("-U", &self.username);
        if self.password.is_some() {
            a.push("-E".into());
        }
        a.extend(action.words().iter().map(|w| w.to_string()));
        a
    }

    /// A `tokio` command for `action`: no shell, password in the environment, killed
    /// when dropped.
    pub fn command(&self, ipmitool: &std::path::Path, action: Action) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new(ipmitool);
        cmd.args(self.args(action)).kill_on_drop(true);
        match &self.password {
            Some(p) => cmd.env(PASSWORD_ENV, p),
            // Not an inherited one either: the node has no password.
            None => cmd.env_remove(PASSWORD_ENV),
        };
        cmd
    }
}

/// Run ipmitool once for `action` on `t`, killed after `limit`; its output (stdout then
/// stderr, trimmed) when it exits with 0.
pub async fn run_ipmitool(
    ipmitool: &std::path::Path,
    t: &Target,
    action: Action,
    limit: Duration,
) -> Result<String, PowerError> {
    let child = t
        .command(ipmitool, action)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| PowerError::Spawn {
            program: ipmitool.display().to_string(),
            source,
        })?;
    // On expiry the future, and with it the child, is dropped: kill_on_drop kills it.
    let out = match tokio::time::timeout(limit, child.wait_with_output()).await {
        Err(_) => {
            return Err(PowerError::Timeout {
                addr: t.addr.clone(),
                secs: limit.as_secs_f64(),
            })
        }
        Ok(r) => r.map_err(PowerError::Wait)?,
    };
    let mut text = String::from_utf8_lossy(&out.stdout).trim_end().to_string();
    let err = String::from_utf8_lossy(&out.stderr);
    if !err.trim().is_empty() {
        if !text.is_empty() {
            text.push('\n');
        }
        text.push_str(err.trim_end());
    }
    let text = text.trim_start_matches('\n').to_string();
    if out.status.success() {
        Ok(text)
    } else {
        Err(PowerError::Failed {
            status: out.status.to_string(),
            output: if text.is_empty() { "(no output)".into() } else { text },
        })
    }
}

/// A request as a head runs it.
#[derive(Debug, Clone)]
pub struct Request {
    pub nodes: Vec<String>,
    pub action: Action,
    pub fanout: usize,
    pub timeout: Duration,
    pub show: bool,
    /// Run here; never forward (set by a forwarding head, so a request moves once).
    pub here: bool,
}

impl Request {
    pub fn from_pb(r: pb::PowerRequest) -> Result<Request, PowerError> {
        Ok(Request {
            action: Action::parse(&r.action)?,
            nodes: r.nodes,
            fanout: if r.fanout == 0 {
                DEFAULT_FANOUT
            } else {
                r.fanout as usize
            },
            timeout: if r.timeout_ms == 0 {
                DEFAULT_TIMEOUT
            } else {
                Duration::from_millis(u64::from(r.timeout_ms))
            },
            show: r.show,
            here: r.here,
        })
    }

    fn to_pb(&self, nodes: Vec<String>) -> pb::PowerRequest {
        pb::PowerRequest {
            nodes,
            action: self.action.as_str().into(),
            fanout: self.fanout as u32,
            timeout_ms: self.timeout.as_millis().min(u128::from(u32::MAX)) as u32,
            show: self.show,
            here: true,
        }
    }
}

/// A head's power service.
#[derive(Debug, Clone, Default)]
pub struct Power {
    cfg: PowerConfig,
}

/// A node's result.
fn result(node: &str, head: u64, r: Result<String, PowerError>, began: Instant) -> pb::PowerResult {
    let (ok, output) = match r {
        Ok(o) => (true, o),
        Err(e) => (false, crate::error::report(&e)),
    };
    pb::PowerResult {
        node: node.to_string(),
        ok,
        output,
        head,
        note: String::new(),
        millis: began.elapsed().as_millis() as u64,
    }
}

impl Power {
    pub fn new(cfg: PowerConfig) -> Power {
        Power { cfg }
    }

    /// Run `req` for the nodes of `view` it names: each rack's share on that rack's
    /// first head, the rest here (see the module doc). Results in node name order.
    pub async fn execute(
        &self,
        cluster: &Cluster,
        view: &BootView,
        req: Request,
        deadline: Instant,
    ) -> Result<Vec<pb::PowerResult>, PowerError> {
        let me = cluster.id();
        let mut names = req.nodes.clone();
        names.sort();
        names.dedup();
        let mut out = Vec::new();
        // Which head runs which nodes.
        let mut plan: BTreeMap<u64, Vec<Arc<BootNode>>> = BTreeMap::new();
        for n in &names {
            if let Some(why) = view.broken.get(n) {
                out.push(result(n, me, Err(PowerError::Broken(why.clone())), Instant::now()));
                continue;
            }
            let Some(node) = view.nodes.get(n) else {
                // Forwarded by a head that knows it: this head's view is behind. Said so,
                // rather than dropped as a name that names nothing.
                if req.here {
                    out.push(result(n, me, Err(PowerError::NotHere { head: me }), Instant::now()));
                }
                continue;
            };
            let head = if req.here {
                me
            } else {
                view.rack_of(node)
                    .and_then(|(_, r)| r.heads.first())
                    .map_or(me, |h| h.id)
            };
            plan.entry(head).or_default().push(node.clone());
        }
        if plan.is_empty() && out.is_empty() {
            return Err(PowerError::NoNodes(if names.len() > 5 {
                format!("{} names ({}, ...)", names.len(), names[..5].join(", "))
            } else {
                names.join(", ")
            }));
        }
        let shares = plan.into_iter().map(|(head, nodes)| {
            let req = &req;
            async move {
                if head == me {
                    return self.run_here(me, nodes, req, deadline).await;
                }
                self.forward(cluster, me, head, nodes, req, deadline).await
            }
        });
        for share in futures::future::join_all(shares).await {
            out.extend(share);
        }
        out.sort_by(|a, b| a.node.cmp(&b.node));
        Ok(out)
    }

    /// Send `nodes` to head `head`; if it does not answer the probe in time, run them
    /// here with a note saying so.
    async fn forward(
        &self,
        cluster: &Cluster,
        me: u64,
        head: u64,
        nodes: Vec<Arc<BootNode>>,
        req: &Request,
        deadline: Instant,
    ) -> Vec<pb::PowerResult> {
        let probe = Duration::from_millis(self.cfg.forward_probe_ms);
        let addr = cluster
            .members()
            .into_iter()
            .find(|(id, _)| *id == head)
            .map(|(_, a)| a);
        let why_not = match addr.as_deref().map(|a| cluster.peer(a)) {
            None => format!("rack head {head} is not a member of the cluster"),
            Some(Err(e)) => format!("rack head {head}: {e}"),
            Some(Ok(mut c)) => match tokio::time::timeout(probe, c.head_status(pb::Empty {})).await {
                Ok(Ok(_)) => {
                    let names: Vec<String> = nodes.iter().map(|n| n.name.clone()).collect();
                    let mut call = tonic::Request::new(req.to_pb(names.clone()));
                    call.set_timeout(deadline.saturating_duration_since(Instant::now()));
                    let began = Instant::now();
                    return match c.power(call).await {
                        Ok(r) => r.into_inner().results,
                        Err(s) => names
                            .iter()
                            .map(|n| {
                                let e = PowerError::Lost {
                                    head,
                                    message: s.message().to_string(),
                                };
                                result(n, head, Err(e), began)
                            })
                            .collect(),
                    };
                }
                Ok(Err(s)) => format!("rack head {head} did not answer ({})", s.message()),
                Err(_) => format!("rack head {head} did not answer within {} ms", probe.as_millis()),
            },
        };
        tracing::warn!(head, "power: {why_not}; running its nodes on this head");
        let note = format!("{why_not}; ran on head {me}");
        let mut results = self.run_here(me, nodes, req, deadline).await;
        for r in &mut results {
            r.note = note.clone();
        }
        results
    }

    /// Run `nodes` on this head, at most `fanout` at once.
    async fn run_here(
        &self,
        me: u64,
        nodes: Vec<Arc<BootNode>>,
        req: &Request,
        deadline: Instant,
    ) -> Vec<pb::PowerResult> {
        futures::stream::iter(nodes)
            .map(|node| async move {
                let began = Instant::now();
                let r = match Target::from_conf(&node.name, node.conf.ipmi.as_ref()) {
                    Err(e) => Err(e),
                    Ok(t) if req.show => Ok(show(&self.cfg.ipmitool, &t, req.action)),
                    Ok(t) => {
                        let left = deadline.saturating_duration_since(began);
                        if left < Duration::from_millis(50) {
                            Err(PowerError::Late)
                        } else {
                            run_ipmitool(&self.cfg.ipmitool, &t, req.action, req.timeout.min(left)).await
                        }
                    }
                };
                result(&node.name, me, r, began)
            })
            .buffer_unordered(req.fanout.max(1))
            .collect()
            .await
    }
}

/// The command line `--show` prints (the password stays out of it, as it does of argv).
pub fn show(ipmitool: &std::path::Path, t: &Target, action: Action) -> String {
    let mut s = String::new();
    if t.password().is_some() {
        s.push_str(PASSWORD_ENV);
        s.push_str("=... ");
    }
    s.push_str(&ipmitool.display().to_string());
    for a in t.args(action) {
        s.push(' ');
        if a.contains(char::is_whitespace) || a.is_empty() {
            s.push_str(&format!("{a:?}"));
        } else {
            s.push_str(&a);
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conf(addr: &str) -> IpmiConf {
        IpmiConf {
            ipaddr: Some(addr.into()),
            username: Some("admin".into()),
            password: Some("s3cret pass".into()),
            port: Some("9623".into()),
            interface: Some("lanplus".into()),
            escapechar: Some("~".into()),
            ..Default::default()
        }
    }

    #[test]
    fn arguments_follow_warewulfs_template_and_never_hold_the_password() {
        let mut c = conf("10.0.0.5");
        c.tags.insert("cipher".into(), "3".into());
        let t = Target::from_conf("n1", Some(&c)).unwrap();
        assert_eq!(
            t.args(Action::Cycle),
            [
                "-I", "lanplus", "-C", "3", "-p", "9623", "-H", "10.0.0.5", "-U", "admin", "-E", "chassis", "power",
                "cycle"
            ]
        );
        assert_eq!(t.args(Action::Console)[4..6], ["-e", "~"]);
        assert_eq!(t.args(Action::Sdr)[t.args(Action::Sdr).len() - 2..], ["sdr", "list"]);
        assert_eq!(
            t.args(Action::Sensors)[t.args(Action::Sensors).len() - 2..],
            ["sensor", "list"]
        );
        for a in Action::REMOTE {
            assert!(!t.args(a).iter().any(|x| x.contains("s3cret")), "{a}");
        }
        assert!(!show(std::path::Path::new("ipmitool"), &t, Action::On).contains("s3cret"));
        assert!(!format!("{t:?}").contains("s3cret"));
        let cmd = t.command(std::path::Path::new("ipmitool"), Action::On);
        let env: Vec<_> = cmd.as_std().get_envs().collect();
        assert!(env.contains(&(
            std::ffi::OsStr::new(PASSWORD_ENV),
            Some(std::ffi::OsStr::new("s3cret pass"))
        )));
    }

    #[test]
    fn without_password_there_is_no_dash_e_and_no_inherited_password() {
        let mut c = conf("10.0.0.5");
        c.password = None;
        let t = Target::from_conf("n1", Some(&c)).unwrap();
        assert!(!t.args(Action::On).contains(&"-E".to_string()));
        let cmd = t.command(std::path::Path::new("ipmitool"), Action::On);
        assert!(cmd.as_std().get_envs().any(|(k, v)| k == PASSWORD_ENV && v.is_none()));
    }

    #[test]
    fn a_node_without_address_or_with_a_bad_field_is_refused_with_its_reason() {
        let e = Target::from_conf("n7", None).unwrap_err();
        assert!(matches!(e, PowerError::NoAddress { .. }));
        assert!(e.to_string().contains("--ipmiaddr ADDR n7"), "{e}");
        assert!(matches!(
            Target::from_conf("n7", Some(&conf("0.0.0.0"))),
            Err(PowerError::NoAddress { .. })
        ));
        let mut c = conf("-oProxyCommand=x");
        assert!(matches!(
            Target::from_conf("n7", Some(&c)),
            Err(PowerError::BadField { field: "ipaddr", .. })
        ));
        c = conf("10.0.0.1");
        c.port = Some("http".into());
        assert!(matches!(
            Target::from_conf("n7", Some(&c)),
            Err(PowerError::BadField { field: "port", .. })
        ));
        c = conf("10.0.0.1");
        c.template = Some("/etc/warewulf/bmc/custom.tmpl".into());
        assert!(matches!(
            Target::from_conf("n7", Some(&c)),
            Err(PowerError::Template(_))
        ));
        c.template = Some("ipmitool.tmpl".into());
        assert!(Target::from_conf("n7", Some(&c)).is_ok());
    }

    #[test]
    fn actions_parse_by_wire_name_and_console_is_not_one() {
        for a in Action::REMOTE {
            assert_eq!(Action::parse(a.as_str()).unwrap(), a);
        }
        assert!(matches!(Action::parse("console"), Err(PowerError::BadAction(_))));
        assert!(matches!(Action::parse("explode"), Err(PowerError::BadAction(_))));
    }

    #[tokio::test]
    async fn a_missing_ipmitool_is_a_per_node_error_that_says_what_to_install() {
        let t = Target::from_conf("n1", Some(&conf("127.0.0.1"))).unwrap();
        let e = run_ipmitool(
            std::path::Path::new("/nonexistent/ipmitool"),
            &t,
            Action::Status,
            Duration::from_secs(1),
        )
        .await
        .unwrap_err();
        assert!(matches!(e, PowerError::Spawn { .. }), "{e:?}");
        assert!(e.to_string().contains("install ipmitool"), "{e}");
    }

    #[tokio::test]
    async fn a_child_that_outlives_its_deadline_is_killed() {
        // `sleep` stands in for an ipmitool that never hears from its BMC.
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("pid");
        let script = dir.path().join("fake-ipmitool");
        std::fs::write(
            &script,
            format!("#!/bin/sh\necho $$ > {}\nexec sleep 30\n", pidfile.display()),
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        let t = Target::from_conf("n1", Some(&conf("127.0.0.1"))).unwrap();
        let began = Instant::now();
        let r = run_ipmitool(&script, &t, Action::Status, Duration::from_millis(300)).await;
        assert!(matches!(r, Err(PowerError::Timeout { .. })), "{r:?}");
        assert!(began.elapsed() < Duration::from_secs(5));
        let pid: i32 = std::fs::read_to_string(&pidfile).unwrap().trim().parse().unwrap();
        // Killed: gone, or a zombie until tokio reaps it.
        let mut gone = false;
        for _ in 0..50 {
            match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
                Err(_) => gone = true,
                Ok(s) => gone = s.split(") ").nth(1).is_some_and(|r| r.starts_with('Z')),
            }
            if gone {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(gone, "ipmitool {pid} still runs after its deadline");
    }
}
