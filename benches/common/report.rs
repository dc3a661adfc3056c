//! One machine-readable line per measured figure, for the harness (`benches/run`) that
//! runs every benchmark and writes the table in docs/PERFORMANCE.md.
//!
//! Each figure is printed as `BENCH-RESULT {json}` on stdout and, when
//! `WULFPACK_BENCH_RESULTS` names a file, appended to it as a JSON line. Only full runs
//! (`cargo bench`) are recorded to the file; smoke runs (`cargo test --benches`) print.

#![allow(dead_code)]

use std::io::Write;

/// Which way is better for a figure (so the ratio reads "> 1 = wulfpack better").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Better {
    Higher,
    Lower,
}

#[derive(Debug, Clone)]
pub struct Figure<'a> {
    pub bench: &'a str,
    pub measure: &'a str,
    pub unit: &'a str,
    pub better: Better,
    /// wulfpack's figure (a median where the benchmark repeats).
    pub wulfpack: f64,
    /// min–max over the runs, when the benchmark repeats.
    pub spread: Option<(f64, f64)>,
    /// The anchor measured in the same run: its name and figure.
    pub anchor: Option<(&'a str, f64)>,
    /// The goal the issues set, as text ("≥ 1.0× nginx", "≤ 2 s").
    pub goal: &'a str,
}

impl Figure<'_> {
    /// wulfpack against the anchor, > 1 when wulfpack is better.
    pub fn ratio(&self) -> Option<f64> {
        let (_, a) = self.anchor?;
        if a == 0.0 || self.wulfpack == 0.0 {
            return None;
        }
        Some(match self.better {
            Better::Higher => self.wulfpack / a,
            Better::Lower => a / self.wulfpack,
        })
    }
}

/// Print (and, in full runs, record) one figure.
pub fn record(f: &Figure, full: bool) {
    let v = serde_json::json!({
        "bench": f.bench,
        "measure": f.measure,
        "unit": f.unit,
        "better": match f.better { Better::Higher => "higher", Better::Lower => "lower" },
        "wulfpack": f.wulfpack,
        "spread": f.spread.map(|(a, b)| [a, b]),
        "anchor_name": f.anchor.map(|a| a.0),
        "anchor": f.anchor.map(|a| a.1),
        "ratio": f.ratio(),
        "goal": f.goal,
    });
    println!("BENCH-RESULT {v}");
    if !full {
        return;
    }
    if let Ok(path) = std::env::var("WULFPACK_BENCH_RESULTS") {
        if let Ok(mut file) = std::fs::OpenOptions::new().create(true).append(true).open(&path) {
            let _ = writeln!(file, "{v}");
        }
    }
}

/// Median, min and max of a sample (sorted copy).
pub fn stats(v: &[f64]) -> (f64, f64, f64) {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    if s.is_empty() {
        return (0.0, 0.0, 0.0);
    }
    (s[s.len() / 2], s[0], s[s.len() - 1])
}
