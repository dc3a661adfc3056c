//! Raft timing and log compaction knobs (`raft:` in `wulfd.yaml`).
//!
//! How openraft 0.9 uses the three timing values (read from its source, 0.9.25), which is
//! why the defaults are what they are (measurements in docs/DECISIONS.md, "Raft timing"):
//! - `heartbeat_ms` is the leader's heartbeat period *and* the deadline of every
//!   AppendEntries RPC (replication and heartbeat alike) and of the leadership check behind
//!   a linearizable read. openraft's timer ticks every 1.5 × `heartbeat_ms`, so heartbeats
//!   actually leave at that period and elections start on a tick.
//! - A follower that knew a leader starts an election only after the leader lease
//!   (= `election_timeout_max_ms`) *plus* its election timeout of silence. The election
//!   timeout is drawn from `min..max` **once per process**, not per election, so two
//!   survivors keep their distance from each other only through that draw and the phase
//!   of their ticks; a narrow range makes split votes likely.
//! - A vote RPC's deadline is `election_timeout_min_ms`.

use serde::{Deserialize, Serialize};

/// Raft timing, configurable per head in `wulfd.yaml` (`raft:` section).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RaftSettings {
    /// Heartbeat period, and the deadline of each AppendEntries RPC (see the module docs).
    pub heartbeat_ms: u64,
    pub election_timeout_min_ms: u64,
    /// Also the leader lease: followers refuse to vote for anyone else for this long
    /// after they last heard from the leader.
    pub election_timeout_max_ms: u64,
    /// Build a snapshot (and purge the log before it) after this many applied entries.
    pub snapshot_after_logs: u64,
    /// Log entries kept behind a snapshot, so a briefly lagging head catches up from
    /// the log instead of receiving the whole snapshot.
    pub keep_logs_after_snapshot: u64,
}

impl Default for RaftSettings {
    fn default() -> Self {
        RaftSettings {
            heartbeat_ms: 100,
            election_timeout_min_ms: 200,
            election_timeout_max_ms: 400,
            snapshot_after_logs: 5000,
            keep_logs_after_snapshot: 500,
        }
    }
}

/// Deadline of one InstallSnapshot chunk (sent and installed), in ms. A snapshot at 10,000
/// nodes is a few MB in 3 MiB chunks; this bounds the cost of a peer that hangs mid-transfer.
pub const INSTALL_SNAPSHOT_TIMEOUT_MS: u64 = 10_000;

impl RaftSettings {
    /// openraft's config, validated.
    pub fn to_config(&self, cluster_name: &str) -> Result<openraft::Config, openraft::ConfigError> {
        openraft::Config {
            cluster_name: cluster_name.to_string(),
            heartbeat_interval: self.heartbeat_ms,
            election_timeout_min: self.election_timeout_min_ms,
            election_timeout_max: self.election_timeout_max_ms,
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(self.snapshot_after_logs),
            max_in_snapshot_log_to_keep: self.keep_logs_after_snapshot,
            install_snapshot_timeout: INSTALL_SNAPSHOT_TIMEOUT_MS,
            ..Default::default()
        }
        .validate()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_a_valid_openraft_config() {
        let c = RaftSettings::default().to_config("t").unwrap();
        assert!(c.election_timeout_min > c.heartbeat_interval);
        assert!(c.election_timeout_max > c.election_timeout_min);
    }

    #[test]
    fn old_raft_sections_still_parse() {
        // A `raft:` section written for the first defaults keeps working (fields unchanged).
        let s: RaftSettings = serde_yaml_ng::from_str(
            "heartbeat_ms: 100\nelection_timeout_min_ms: 400\nelection_timeout_max_ms: 800\nsnapshot_after_logs: 5000\n",
        )
        .unwrap();
        assert_eq!(s.heartbeat_ms, 100);
        assert_eq!(
            s.keep_logs_after_snapshot,
            RaftSettings::default().keep_logs_after_snapshot
        );
    }
}
