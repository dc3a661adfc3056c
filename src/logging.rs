//! Log output of the binaries (`wulfd`, `wwctl`): plain text for people, JSON lines for
//! collectors, and colour only where a person reads a terminal.
//!
//! Colour codes are written only when stderr is a terminal and `NO_COLOR` is unset
//! (<https://no-color.org>): under systemd, stderr is a journald stream, and escape codes
//! there and in files are noise that breaks `grep`.

use std::io::IsTerminal;

use tracing::Metadata;
use tracing_subscriber::filter::filter_fn;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// `--log-format` of `wulfd`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One human-readable line per event (time, level, target, message, fields).
    #[default]
    Text,
    /// One JSON object per line: `timestamp`, `level`, `target`, `fields` (with `message`)
    /// and the enclosing `span`s, for journald/Vector/Fluent Bit/Loki.
    Json,
}

/// Whether to write ANSI colour codes: only to a terminal, and never when `NO_COLOR` is set
/// to a non-empty value.
pub fn use_colour(stderr_is_terminal: bool, no_color: Option<&std::ffi::OsStr>) -> bool {
    stderr_is_terminal && no_color.is_none_or(|v| v.is_empty())
}

/// What to log when the filter variable is unset: `RUST_LOG`-style directives, and events
/// to drop although their level and target pass (see `raft::is_openraft_peer_rpc_error`).
#[derive(Debug, Clone)]
pub struct Defaults {
    pub directives: String,
    pub drop: Option<fn(&Metadata<'_>) -> bool>,
}

/// Install the global subscriber writing to stderr. Levels and targets come from the
/// environment variable `env_var` (`RUST_LOG` syntax) when it is set and valid; else from
/// `defaults`, whose `drop` applies only then (whoever sets the variable sees everything
/// it selects).
pub fn init(format: LogFormat, env_var: &str, defaults: Defaults) {
    let (filter, drop) = match EnvFilter::try_from_env(env_var) {
        Ok(f) => (f, None),
        Err(_) => (EnvFilter::new(&defaults.directives), defaults.drop),
    };
    let colour = use_colour(std::io::stderr().is_terminal(), std::env::var_os("NO_COLOR").as_deref());
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let fmt = match format {
        LogFormat::Text => fmt.with_ansi(colour).boxed(),
        // JSON never carries escape codes, whatever the terminal.
        LogFormat::Json => fmt.json().with_ansi(false).boxed(),
    };
    let keep = filter_fn(move |meta| !drop.is_some_and(|d| d(meta)));
    tracing_subscriber::registry()
        .with(filter)
        .with(fmt.with_filter(keep))
        .init();
}

/// Rate limit for a log line about repeated events (refused handshakes, refused calls,
/// refused boot clients): at most one line per period, carrying how many happened.
#[derive(Debug)]
pub struct Every {
    period: std::time::Duration,
    /// When the last line was logged, and the events counted since.
    state: std::sync::Mutex<(Option<std::time::Instant>, u64)>,
}

impl Every {
    pub const fn new(period: std::time::Duration) -> Every {
        Every {
            period,
            state: std::sync::Mutex::new((None, 0)),
        }
    }

    /// Count one event; `Some(n)` when a line is due now, `n` the events since the last
    /// line (this one included).
    pub fn tick(&self) -> Option<u64> {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        s.1 += 1;
        if s.0.is_some_and(|t| t.elapsed() < self.period) {
            return None;
        }
        let n = s.1;
        *s = (Some(std::time::Instant::now()), 0);
        Some(n)
    }
}

/// [`Every`] per key (a client address): at most one line per key and period, carrying
/// how many events that key had since its last line, so one noisy client neither floods
/// the log nor hides another. Bounded: at most [`EveryPer::MAX_KEYS`] keys are tracked;
/// when full, keys whose period has passed are forgotten, and events of keys that still
/// find no room share one [`Every`] (reported with the key that makes the line due).
#[derive(Debug)]
pub struct EveryPer<K> {
    period: std::time::Duration,
    keys: std::sync::Mutex<std::collections::HashMap<K, (std::time::Instant, u64)>>,
    overflow: Every,
}

impl<K: std::hash::Hash + Eq + Clone> EveryPer<K> {
    pub const MAX_KEYS: usize = 4096;

    pub fn new(period: std::time::Duration) -> EveryPer<K> {
        EveryPer {
            period,
            keys: Default::default(),
            overflow: Every::new(period),
        }
    }

    /// Count one event of `key`; `Some(n)` when a line about `key` is due now, `n` its
    /// events since its last line (this one included).
    pub fn tick(&self, key: &K) -> Option<u64> {
        let now = std::time::Instant::now();
        let mut keys = self.keys.lock().unwrap_or_else(|e| e.into_inner());
        if !keys.contains_key(key) && keys.len() >= Self::MAX_KEYS {
            let period = self.period;
            keys.retain(|_, (t, _)| now.duration_since(*t) < period);
            if keys.len() >= Self::MAX_KEYS {
                drop(keys);
                return self.overflow.tick();
            }
        }
        match keys.get_mut(key) {
            Some((t, n)) => {
                *n += 1;
                if now.duration_since(*t) < self.period {
                    return None;
                }
                let due = *n;
                *t = now;
                *n = 0;
                Some(due)
            }
            None => {
                keys.insert(key.clone(), (now, 0));
                Some(1)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_logs_the_first_then_counts_until_the_period_ends() {
        let e = Every::new(std::time::Duration::from_millis(50));
        assert_eq!(e.tick(), Some(1));
        assert_eq!(e.tick(), None);
        assert_eq!(e.tick(), None);
        std::thread::sleep(std::time::Duration::from_millis(60));
        assert_eq!(e.tick(), Some(3), "the two held back and this one");
    }

    #[test]
    fn every_per_key_limits_each_key_on_its_own() {
        let e = EveryPer::new(std::time::Duration::from_millis(50));
        assert_eq!(e.tick(&1), Some(1));
        assert_eq!(e.tick(&1), None);
        assert_eq!(e.tick(&2), Some(1), "another key is not held back by the first");
        assert_eq!(e.tick(&1), None);
        std::thread::sleep(std::time::Duration::from_millis(60));
        assert_eq!(e.tick(&1), Some(3), "the two held back and this one");
        assert_eq!(e.tick(&2), Some(1));
    }

    #[test]
    fn every_per_key_is_bounded() {
        let e = EveryPer::<u32>::new(std::time::Duration::from_secs(60));
        for k in 0..EveryPer::<u32>::MAX_KEYS as u32 {
            assert_eq!(e.tick(&k), Some(1));
        }
        // Full, every key within its period: the rest share one limiter.
        assert_eq!(e.tick(&1_000_000), Some(1));
        assert_eq!(e.tick(&1_000_001), None);
        assert_eq!(e.keys.lock().unwrap().len(), EveryPer::<u32>::MAX_KEYS);
    }

    use super::*;
    use std::ffi::OsStr;

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        assert!(use_colour(true, None));
        assert!(
            !use_colour(false, None),
            "a file, a pipe or journald gets no escape codes"
        );
        assert!(!use_colour(true, Some(OsStr::new("1"))));
        assert!(
            use_colour(true, Some(OsStr::new(""))),
            "NO_COLOR= (empty) does not count"
        );
    }
}
