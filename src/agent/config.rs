//! `wwclient.conf`: which heads to ask, how often, how long to wait.
//!
//! A `key = value` file (the `wwclient` overlay renders it; a shell line or a template
//! writes it without quoting rules). `#` starts a comment; blank lines are ignored;
//! an unknown key is an error, so a typo is not silently a default.
//!
//! ```text
//! # /etc/warewulf/wwclient.conf
//! head = http://10.0.0.1:9873     # in order: the first that answers serves
//! head = http://10.0.0.2:9873
//! head = https://10.0.0.3:9874    # HTTPS: the head must show a certificate of `ca`
//! ca = /etc/warewulf/ca.crt       # the cluster CA (written by the wwclient overlay)
//! interval = 60s                  # between fetches (default 60s)
//! timeout = 5s                    # per head: connect + whole response (default 5s)
//! secure = true                   # bind a source port < 1024 (Warewulf's secure mode)
//! assetkey = abc123               # the node's asset key, when it has one
//! ```
//!
//! Durations are seconds (`60`) or humantime (`1m`, `500ms`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::AgentError;

/// Default path of the config file on a node.
pub const DEFAULT_PATH: &str = "/etc/warewulf/wwclient.conf";

/// Where the `wwclient` overlay writes the cluster CA's certificate.
pub const DEFAULT_CA_PATH: &str = "/etc/warewulf/ca.crt";

/// One head: `http://host:port[/prefix]` or `https://…`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    /// As written in the config (for messages).
    pub url: String,
    /// `host:port` to connect to and to send as `Host:`.
    pub authority: String,
    /// Path prefix before `/runtime/…` (empty, or `/something`).
    pub prefix: String,
    /// `https://`: TLS, the head's certificate checked against the config's `ca`.
    pub tls: bool,
}

impl Head {
    /// Parses `http://host[:port][/prefix]` (port 80 when absent) or `https://…` (443):
    /// heads serve the boot routes on plain HTTP, as Warewulf's do, and over HTTPS
    /// where `https_listen` is set.
    pub fn parse(url: &str) -> Result<Head, String> {
        let url = url.trim();
        let (tls, rest) = match url.strip_prefix("https://") {
            Some(r) => (true, r),
            None => (false, url.strip_prefix("http://").unwrap_or(url)),
        };
        let (auth, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        if auth.is_empty() || auth.contains(['@', ' ', '?', '#']) {
            return Err(format!("{url}: expected http://HOST:PORT or https://HOST:PORT"));
        }
        // `[v6]:port`, `[v6]`, `host:port`, `host`.
        let has_port = match auth.rfind(']') {
            Some(b) => auth[b..].contains(':'),
            None => auth.contains(':'),
        };
        if has_port {
            let port = auth.rsplit(':').next().unwrap_or_default();
            if port.parse::<u16>().is_err() {
                return Err(format!("{url}: bad port {port:?}"));
            }
        }
        let authority = match (has_port, tls) {
            (true, _) => auth.to_owned(),
            (false, false) => format!("{auth}:80"),
            (false, true) => format!("{auth}:443"),
        };
        Ok(Head {
            url: url.to_owned(),
            authority,
            prefix: path.trim_end_matches('/').to_owned(),
            tls,
        })
    }
}

/// The parsed config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub heads: Vec<Head>,
    pub interval: Duration,
    pub timeout: Duration,
    pub secure: bool,
    pub assetkey: Option<String>,
    /// The cluster CA's certificate (PEM file) that `https://` heads must be signed by.
    pub ca: Option<PathBuf>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            heads: Vec::new(),
            interval: Duration::from_secs(60),
            timeout: Duration::from_secs(5),
            secure: false,
            assetkey: None,
            ca: None,
        }
    }
}

fn duration(v: &str) -> Result<Duration, String> {
    let d = match v.parse::<u64>() {
        Ok(secs) => Duration::from_secs(secs),
        Err(_) => humantime::parse_duration(v).map_err(|e| format!("{v:?} is not a duration: {e}"))?,
    };
    if d.is_zero() {
        return Err("must be more than 0".into());
    }
    Ok(d)
}

impl Config {
    /// Parses the text of a config file.
    pub fn parse(text: &str) -> Result<Config, String> {
        let mut c = Config::default();
        for (n, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let at = |e: String| format!("line {}: {e}", n + 1);
            let (k, v) = line
                .split_once('=')
                .ok_or_else(|| at(format!("{line:?} is not `key = value`")))?;
            let (k, v) = (k.trim(), v.trim());
            match k {
                "head" => c.heads.push(Head::parse(v).map_err(at)?),
                "interval" => c.interval = duration(v).map_err(|e| at(format!("interval: {e}")))?,
                "timeout" => c.timeout = duration(v).map_err(|e| at(format!("timeout: {e}")))?,
                "secure" => {
                    c.secure = match v {
                        "true" | "yes" | "1" => true,
                        "false" | "no" | "0" => false,
                        _ => return Err(at(format!("secure: {v:?} is not true or false"))),
                    }
                }
                "assetkey" => c.assetkey = Some(v.to_owned()).filter(|v| !v.is_empty()),
                "ca" => c.ca = Some(PathBuf::from(v)).filter(|p| !p.as_os_str().is_empty()),
                other => {
                    return Err(at(format!(
                        "unknown key {other:?} (known: head, interval, timeout, secure, assetkey, ca)"
                    )))
                }
            }
        }
        if c.heads.is_empty() {
            return Err("no `head = http://ADDR:PORT` line: wwclient has nowhere to fetch from".into());
        }
        if let (Some(h), None) = (c.heads.iter().find(|h| h.tls), &c.ca) {
            return Err(format!(
                "head {}: HTTPS needs `ca = FILE`, the cluster CA's certificate (the wwclient overlay writes it to {DEFAULT_CA_PATH})",
                h.url
            ));
        }
        Ok(c)
    }

    /// Reads and parses `path`.
    pub fn load(path: &Path) -> Result<Config, AgentError> {
        let text = std::fs::read_to_string(path).map_err(|e| AgentError::Config {
            path: path.to_owned(),
            why: format!("cannot read it: {e}"),
        })?;
        Config::parse(&text).map_err(|why| AgentError::Config {
            path: path.to_owned(),
            why,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_heads_in_order_and_settings() {
        let c = Config::parse(
            "# comment\nhead = http://10.0.0.1:9873\nhead=http://[fd00::2]:9873/ww/\n\ninterval = 2m\ntimeout = 3 # s\nsecure = yes\nassetkey = k1\n",
        )
        .unwrap();
        assert_eq!(c.heads[0].authority, "10.0.0.1:9873");
        assert_eq!(c.heads[1].authority, "[fd00::2]:9873");
        assert_eq!(c.heads[1].prefix, "/ww");
        assert_eq!(c.interval, Duration::from_secs(120));
        assert_eq!(c.timeout, Duration::from_secs(3));
        assert!(c.secure);
        assert_eq!(c.assetkey.as_deref(), Some("k1"));
        let t = Config::parse("head = https://10.0.0.1:9874\nhead = https://h\nca = /etc/warewulf/ca.crt\n").unwrap();
        assert!(t.heads.iter().all(|h| h.tls));
        assert_eq!(t.heads[1].authority, "h:443");
        assert_eq!(t.ca.as_deref(), Some(Path::new("/etc/warewulf/ca.crt")));
        let d = Config::parse("head = 10.0.0.9").unwrap();
        assert_eq!(d.heads[0].authority, "10.0.0.9:80");
        assert_eq!(
            (d.interval, d.timeout, d.secure),
            (Duration::from_secs(60), Duration::from_secs(5), false)
        );
    }

    #[test]
    fn refuses_what_it_does_not_understand() {
        for (text, want) in [
            ("", "no `head"),
            ("head = https://h:1", "HTTPS needs `ca = FILE`"),
            ("head = http://h:port", "bad port"),
            ("head = http://h:1\nintreval = 5", "unknown key \"intreval\""),
            ("head = http://h:1\ninterval = 0", "more than 0"),
            ("head = http://h:1\nsecure = maybe", "not true or false"),
            ("head http://h:1", "line 1"),
        ] {
            let err = Config::parse(text).unwrap_err();
            assert!(err.contains(want), "{text:?}: {err}");
        }
    }
}
