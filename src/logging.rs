//! Log output of the binaries (`wulfd`, `wwctl`): plain text for people, JSON lines for
//! collectors, and colour only where a person reads a terminal.
//!
//! Colour codes are written only when stderr is a terminal and `NO_COLOR` is unset
//! (<https://no-color.org>): under systemd, stderr is a journald stream, and escape codes
//! there and in files are noise that breaks `grep`.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

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

/// Install the global subscriber writing to stderr. `filter` comes from the environment
/// variable `env_var` (`RUST_LOG` syntax) if it is set and valid, else `default_filter`.
pub fn init(format: LogFormat, env_var: &str, default_filter: &str) {
    let filter = EnvFilter::try_from_env(env_var).unwrap_or_else(|_| EnvFilter::new(default_filter));
    let colour = use_colour(std::io::stderr().is_terminal(), std::env::var_os("NO_COLOR").as_deref());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.with_ansi(colour).init(),
        // JSON never carries escape codes, whatever the terminal.
        LogFormat::Json => builder.json().with_ansi(false).init(),
    }
}

#[cfg(test)]
mod tests {
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
