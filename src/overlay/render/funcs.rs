//! Warewulf's template functions and the sprig helpers its templates use, as Tera functions
//! and filters.
//!
//! Tera functions take named arguments only, so `{{ Include "keys/x" }}` is
//! `{{ Include(path="keys/x") }}`; a sprig function whose first argument is the value it
//! works on is a filter (`{{ name | basename }}`). docs/OVERLAYS.md has the full table.

use std::sync::Arc;

use regex::Regex;
use tera::{Kwargs, State, TeraResult, Value};

use super::{image_path, marker, AccessError, AccessPolicy, FileAccess};

fn err(msg: impl ToString) -> tera::Error {
    tera::Error::message(msg)
}

pub(crate) fn register(tera: &mut tera::Tera, access: Arc<dyn FileAccess>, policy: Arc<AccessPolicy>) {
    // Host and image files.
    {
        let (a, p) = (access.clone(), policy.clone());
        tera.register_function("Include", move |kw: Kwargs, _: &State| -> TeraResult<String> {
            let path = kw.must_get::<&str>("path")?;
            let optional = kw.get::<bool>("optional")?.unwrap_or(false);
            let full = p.host_path(path).map_err(err)?;
            match a.host_file(&full) {
                Err(AccessError::Io { source, .. }) if optional && source.kind() == std::io::ErrorKind::NotFound => {
                    Ok(String::new())
                }
                r => r.map_err(err),
            }
        });
    }
    {
        let (a, p) = (access.clone(), policy.clone());
        tera.register_function("IncludeBlock", move |kw: Kwargs, _: &State| -> TeraResult<String> {
            let path = kw.must_get::<&str>("path")?;
            let stop = kw.must_get::<&str>("abort")?;
            let full = p.host_path(path).map_err(err)?;
            // A head without the file (a fresh /etc/hosts) gets just the generated block.
            match a.host_file(&full) {
                Ok(text) => Ok(include_block(&text, stop)),
                Err(AccessError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
                    Ok(String::new())
                }
                Err(e) => Err(err(e)),
            }
        });
    }
    {
        let a = access.clone();
        tera.register_function("IncludeFrom", move |kw: Kwargs, _: &State| -> TeraResult<String> {
            let image = kw.must_get::<&str>("image")?;
            let path = kw.must_get::<&str>("path")?;
            if image.is_empty() || image.contains('/') || image.starts_with('.') {
                return Err(err(format!("IncludeFrom: {image:?} is not an image name")));
            }
            let full = image_path(path).ok_or_else(|| {
                err(format!(
                    "IncludeFrom: {path:?} walks out of the image with `..`; name a path inside it"
                ))
            })?;
            a.image_file(image, &full).map_err(err)
        });
    }
    {
        let (a, p) = (access.clone(), policy.clone());
        tera.register_function("readlink", move |kw: Kwargs, _: &State| -> TeraResult<String> {
            let path = kw.must_get::<&str>("path")?;
            let full = p.host_path(path).map_err(err)?;
            a.host_readlink(&full).map_err(err)
        });
    }
    {
        let (a, p) = (access, policy);
        tera.register_function("ImportLink", move |kw: Kwargs, _: &State| -> TeraResult<String> {
            let path = kw.must_get::<&str>("path")?;
            let full = p.host_path(path).map_err(err)?;
            let target = a.host_readlink(&full).map_err(err)?;
            Ok(marker("softlink", &target))
        });
    }
    // Output shaping.
    tera.register_function("file", |kw: Kwargs, _: &State| -> TeraResult<String> {
        let name = kw.must_get::<&str>("name")?;
        if name.is_empty() || super::normalize(&format!("/{name}")).is_none() {
            return Err(err(format!("file: {name:?} is not a file name inside the overlay")));
        }
        Ok(marker("file", name))
    });
    tera.register_function("softlink", |kw: Kwargs, _: &State| -> TeraResult<String> {
        Ok(marker("softlink", kw.must_get::<&str>("target")?))
    });
    tera.register_function("nobackup", |_: Kwargs, _: &State| marker("nobackup", ""));
    tera.register_function("abort", |_: Kwargs, _: &State| marker("abort", ""));
    tera.register_function("UniqueField", |kw: Kwargs, _: &State| -> TeraResult<String> {
        let sep = kw.must_get::<&str>("sep")?;
        let index = kw.must_get::<i64>("index")?;
        let input = kw.must_get::<&str>("input")?;
        Ok(unique_field(sep, usize::try_from(index).unwrap_or(0), input))
    });
    tera.register_function("coalesce", |kw: Kwargs, _: &State| -> TeraResult<Value> {
        let values = kw.must_get::<Vec<Value>>("values")?;
        Ok(values.into_iter().find(not_empty).unwrap_or_else(Value::none))
    });
    // wulfpack's own: whether an address lies in a CIDR network (wwclient's config picks
    // the heads of the node's rack with it). An address with a prefix (`10.0.0.5/24`)
    // counts by its address; anything unparsable is simply not inside.
    tera.register_function("in_network", |kw: Kwargs, _: &State| -> TeraResult<bool> {
        let ip = kw.must_get::<&str>("ip")?;
        let network = kw.must_get::<&str>("network")?;
        let ip = ip.split('/').next().unwrap_or(ip).trim().parse::<std::net::Ipv4Addr>();
        let net = network.trim().parse::<ipnet::Ipv4Net>();
        Ok(matches!((ip, net), (Ok(ip), Ok(net)) if net.contains(&ip)))
    });
    // Filters.
    tera.register_filter("basename", basename);
    tera.register_filter("dirname", dirname);
    tera.register_filter("inc", inc);
    tera.register_filter("dec", dec);
    tera.register_filter("SystemdEscape", systemd_escape_filter);
    tera.register_filter("SystemdEscapePath", systemd_escape_path_filter);
    tera.register_filter("append", append);
    tera.register_filter("without", without);
    tera.register_filter("splitList", split_list);
    tera.register_filter("regexMatch", regex_match);
    tera.register_filter("regexSplit", regex_split);
    tera.register_filter("regexReplaceAll", regex_replace_all);
    tera.register_filter("substr", substr);
    tera.register_filter("ternary", ternary);
    tera.register_filter("hasKey", has_key);
    tera.register_filter("set", set);
    tera.register_filter("toJson", to_json);
    tera.register_filter("empty", empty);
}

/// The file's lines up to (not including) the first line containing `stop`.
pub(crate) fn include_block(text: &str, stop: &str) -> String {
    let mut out = String::new();
    for line in text.split_inclusive('\n') {
        if line.contains(stop) {
            break;
        }
        out.push_str(line);
    }
    out
}

/// Warewulf's `UniqueField`: keep the first line for each value of field `index` (fields
/// split by `sep`); later lines with the same value are dropped. Empty lines are dropped.
pub(crate) fn unique_field(sep: &str, index: usize, input: &str) -> String {
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::new();
    for line in input.lines() {
        if line.trim().is_empty() {
            continue;
        }
        let field = line.split(sep).nth(index).unwrap_or("");
        if seen.insert(field.to_owned()) {
            out.push(line);
        }
    }
    out.join("\n")
}

fn not_empty(v: &Value) -> bool {
    v.is_truthy()
}

fn basename(v: &str, _: Kwargs, _: &State) -> String {
    let t = v.trim_end_matches('/');
    if t.is_empty() {
        return if v.is_empty() { ".".into() } else { "/".into() };
    }
    t.rsplit('/').next().unwrap_or(t).to_owned()
}

fn dirname(v: &str, _: Kwargs, _: &State) -> String {
    match v.trim_end_matches('/').rsplit_once('/') {
        Some(("", _)) => "/".into(),
        Some((d, _)) => d.to_owned(),
        None => ".".into(),
    }
}

fn int_of(v: &Value) -> TeraResult<i64> {
    if let Some(i) = v.as_i64() {
        return Ok(i);
    }
    v.as_str()
        .and_then(|s| s.trim().parse().ok())
        .ok_or_else(|| err(format!("{v} is not a whole number")))
}

fn inc(v: &Value, _: Kwargs, _: &State) -> TeraResult<i64> {
    Ok(int_of(v)? + 1)
}

fn dec(v: &Value, _: Kwargs, _: &State) -> TeraResult<i64> {
    Ok(int_of(v)? - 1)
}

/// systemd-escape: `/` → `-`, and bytes outside `[A-Za-z0-9:_.]` (and a leading `.`) as `\xNN`.
pub(crate) fn systemd_escape(s: &str) -> String {
    let mut out = String::new();
    for (i, b) in s.bytes().enumerate() {
        match b {
            b'/' => out.push('-'),
            b'.' if i == 0 => out.push_str("\\x2e"),
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b':' | b'_' | b'.' => out.push(b as char),
            _ => out.push_str(&format!("\\x{b:02x}")),
        }
    }
    out
}

/// systemd-escape --path: the path normalized (no duplicate or surrounding `/`), `/` → `-`.
pub(crate) fn systemd_escape_path(s: &str) -> String {
    let parts: Vec<&str> = s.split('/').filter(|p| !p.is_empty() && *p != ".").collect();
    if parts.is_empty() {
        return "-".into();
    }
    systemd_escape(&parts.join("/"))
}

fn systemd_escape_filter(v: &str, _: Kwargs, _: &State) -> String {
    systemd_escape(v)
}

fn systemd_escape_path_filter(v: &str, _: Kwargs, _: &State) -> String {
    systemd_escape_path(v)
}

fn as_list(v: &Value) -> Vec<Value> {
    match v.as_array() {
        Some(a) => a.to_vec(),
        None if v.is_undefined() || v.is_none() => Vec::new(),
        None => vec![v.clone()],
    }
}

fn append(v: &Value, kw: Kwargs, _: &State) -> TeraResult<Vec<Value>> {
    let mut l = as_list(v);
    l.push(kw.must_get::<Value>("value")?);
    Ok(l)
}

fn without(v: &Value, kw: Kwargs, _: &State) -> TeraResult<Vec<Value>> {
    let drop = as_list(&kw.must_get::<Value>("values")?);
    Ok(as_list(v).into_iter().filter(|x| !drop.contains(x)).collect())
}

fn split_list(v: &str, kw: Kwargs, _: &State) -> TeraResult<Vec<Value>> {
    let sep = kw.must_get::<&str>("sep")?;
    Ok(v.split(sep).map(Value::from).collect())
}

fn re(p: &str) -> TeraResult<Regex> {
    Regex::new(p).map_err(|e| err(format!("bad regular expression {p:?}: {e}")))
}

fn regex_match(v: &str, kw: Kwargs, _: &State) -> TeraResult<bool> {
    Ok(re(kw.must_get::<&str>("pattern")?)?.is_match(v))
}

fn regex_split(v: &str, kw: Kwargs, _: &State) -> TeraResult<Vec<Value>> {
    let r = re(kw.must_get::<&str>("pattern")?)?;
    let n = kw.get::<i64>("n")?.unwrap_or(-1);
    Ok(if n < 0 {
        r.split(v).map(Value::from).collect()
    } else {
        r.splitn(v, n as usize).map(Value::from).collect()
    })
}

fn regex_replace_all(v: &str, kw: Kwargs, _: &State) -> TeraResult<String> {
    let r = re(kw.must_get::<&str>("pattern")?)?;
    Ok(r.replace_all(v, kw.must_get::<&str>("replacement")?).into_owned())
}

/// sprig `substr start end` over bytes; an out-of-range end means the rest.
fn substr(v: &str, kw: Kwargs, _: &State) -> TeraResult<String> {
    let len = v.len() as i64;
    let start = kw.get::<i64>("start")?.unwrap_or(0).clamp(0, len) as usize;
    let end = kw.get::<i64>("end")?.unwrap_or(len);
    let end = if end < 0 || end > len {
        len as usize
    } else {
        end as usize
    };
    Ok(v.get(start..end.max(start)).unwrap_or("").to_owned())
}

fn ternary(v: &Value, kw: Kwargs, _: &State) -> TeraResult<Value> {
    let key = if v.is_truthy() { "yes" } else { "no" };
    kw.must_get::<Value>(key)
}

fn has_key(v: &Value, kw: Kwargs, _: &State) -> TeraResult<bool> {
    let k = kw.must_get::<&str>("key")?;
    Ok(v.as_map().is_some_and(|m| m.keys().any(|x| x.as_str() == Some(k))))
}

/// A copy of the map with `key` set to `value` (sprig's `set` returns the map too).
fn set(v: &Value, kw: Kwargs, _: &State) -> TeraResult<Value> {
    let mut m = v.as_map().cloned().unwrap_or_default();
    let k = kw.must_get::<&str>("key")?.to_owned();
    m.insert(k.into(), kw.must_get::<Value>("value")?);
    m.sort_keys();
    Ok(Value::from(m))
}

fn to_json(v: &Value, kw: Kwargs, _: &State) -> TeraResult<String> {
    let pretty = kw.get::<bool>("pretty")?.unwrap_or(false);
    let r = if pretty {
        serde_json::to_string_pretty(v)
    } else {
        serde_json::to_string(v)
    };
    r.map_err(|e| err(format!("toJson: {e}")))
}

fn empty(v: &Value, _: Kwargs, _: &State) -> bool {
    !v.is_truthy()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_like_systemd() {
        assert_eq!(systemd_escape_path("/scratch"), "scratch");
        assert_eq!(systemd_escape_path("/var/lib/my-dir/"), "var-lib-my\\x2ddir");
        assert_eq!(systemd_escape_path("/"), "-");
        assert_eq!(systemd_escape("a b/c"), "a\\x20b-c");
        assert_eq!(systemd_escape(".hidden"), "\\x2ehidden");
    }

    #[test]
    fn unique_field_keeps_first() {
        let s = "root:x:0\nbin:x:1\nroot:y:0\n\nadm:x:3";
        assert_eq!(unique_field(":", 0, s), "root:x:0\nbin:x:1\nadm:x:3");
        assert_eq!(unique_field(":", 2, "a:x:1\nb:x:1"), "a:x:1");
    }

    #[test]
    fn include_block_stops_before_marker() {
        assert_eq!(include_block("a\nb\n# stop here\nc\n", "# stop"), "a\nb\n");
        assert_eq!(include_block("a\nb", "zzz"), "a\nb");
    }
}
