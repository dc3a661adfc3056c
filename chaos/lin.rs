//! A linearizability checker for registers (the chaos suite's first invariant).
//!
//! # Why write one
//! Jepsen's Knossos and Porcupine (Go) are the known checkers; there is no kept Rust
//! crate for it, and the algorithm is short: Wing & Gong's search with Lowe's memo of
//! visited (linearized set, register value) configurations, as Porcupine does. Each key
//! is checked alone (a history of many registers is linearizable iff each register's
//! sub-history is — linearizability is local), which keeps every search small.
//!
//! # The history
//! Each operation has a call time and, when the client heard back, a return time. A
//! write whose outcome is unknown (the client timed out: it may have been applied, even
//! later, as the client retried with one request id) has no return: it may take effect
//! at any point after its call, or never, and this checker puts its return at the end of
//! time, where linearizing it last means "never observed". Reads that failed tell
//! nothing and are left out by the recorder. Op A must precede op B only when A
//! returned strictly before B was called; ties count as concurrent.

use std::collections::{BTreeMap, HashMap, HashSet};

/// One operation on one register, as a client saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Op {
    pub client: usize,
    pub key: String,
    pub kind: OpKind,
    /// Microseconds since the run started.
    pub call: u64,
    /// `None`: the outcome is unknown (a write that timed out).
    pub ret: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OpKind {
    Write(String),
    /// The value read; `None` when the register was empty.
    Read(Option<String>),
}

/// Why a key's history has no linearization: where the search got stuck.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub key: String,
    /// The operation whose return could never be reached with every earlier
    /// operation linearized (in the deepest configuration the search saw).
    pub stuck_at: Op,
    /// How many operations of the key were linearized in that deepest configuration.
    pub linearized: usize,
    pub ops: usize,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let o = &self.stuck_at;
        let what = match &o.kind {
            OpKind::Write(v) => format!("write {v:?}"),
            OpKind::Read(v) => format!("read returning {v:?}"),
        };
        write!(
            f,
            "register {}: not linearizable; at most {} of {} operations order, stuck at client {}'s {what} \
             called at {:.3} s, returned at {}",
            self.key,
            self.linearized,
            self.ops,
            o.client,
            o.call as f64 / 1e6,
            o.ret.map_or("(unknown)".into(), |r| format!("{:.3} s", r as f64 / 1e6)),
        )
    }
}

/// Check every key of `history` against a register that starts as `initial[key]`
/// (absent: empty). Returns the keys' violations, empty when linearizable.
pub fn check(history: &[Op], initial: &BTreeMap<String, String>) -> Vec<Violation> {
    let mut by_key: BTreeMap<&str, Vec<&Op>> = BTreeMap::new();
    for op in history {
        by_key.entry(op.key.as_str()).or_default().push(op);
    }
    by_key
        .into_iter()
        .filter_map(|(k, ops)| check_key(k, &ops, initial.get(k).cloned()).err().map(|v| *v))
        .collect()
}

/// Events of one key in time order, as a doubly linked list over indices so that an
/// operation's call and return can be lifted out and put back in O(1).
struct Events {
    /// (op index, is_call) per event; event 0 is the list head (a sentinel).
    ev: Vec<(usize, bool)>,
    next: Vec<usize>,
    prev: Vec<usize>,
    /// Per op: its call event and its return event.
    of_op: Vec<(usize, usize)>,
}

const END: usize = usize::MAX;

impl Events {
    fn new(ops: &[&Op]) -> Events {
        // Calls sort before returns at equal times: equal times are concurrent.
        let mut order: Vec<(u64, u8, usize, bool)> = Vec::with_capacity(ops.len() * 2);
        for (i, o) in ops.iter().enumerate() {
            order.push((o.call, 0, i, true));
            order.push((o.ret.unwrap_or(u64::MAX), 1, i, false));
        }
        order.sort();
        let mut ev = vec![(usize::MAX, false)];
        ev.extend(order.iter().map(|&(_, _, i, c)| (i, c)));
        let n = ev.len();
        let next = (0..n).map(|i| if i + 1 < n { i + 1 } else { END }).collect();
        let prev = (0..n).map(|i| if i == 0 { END } else { i - 1 }).collect();
        let mut of_op = vec![(0, 0); ops.len()];
        for (e, &(i, c)) in ev.iter().enumerate().skip(1) {
            if c {
                of_op[i].0 = e;
            } else {
                of_op[i].1 = e;
            }
        }
        Events { ev, next, prev, of_op }
    }

    fn unlink(&mut self, e: usize) {
        let (p, n) = (self.prev[e], self.next[e]);
        self.next[p] = n;
        if n != END {
            self.prev[n] = p;
        }
    }

    /// Put `e` back where it was (its neighbours are unchanged since it was unlinked,
    /// as lifts are undone in reverse order).
    fn relink(&mut self, e: usize) {
        let (p, n) = (self.prev[e], self.next[e]);
        self.next[p] = e;
        if n != END {
            self.prev[n] = e;
        }
    }

    fn lift(&mut self, op: usize) {
        let (c, r) = self.of_op[op];
        self.unlink(c);
        self.unlink(r);
    }

    fn unlift(&mut self, op: usize) {
        let (c, r) = self.of_op[op];
        self.relink(r);
        self.relink(c);
    }
}

fn check_key(key: &str, ops: &[&Op], initial: Option<String>) -> Result<(), Box<Violation>> {
    // Values as small integers: 0 is "empty".
    let mut ids: HashMap<String, u32> = HashMap::new();
    let mut id = |v: &Option<String>| -> u32 {
        match v {
            None => 0,
            Some(s) => {
                let n = ids.len() as u32 + 1;
                *ids.entry(s.clone()).or_insert(n)
            }
        }
    };
    let init = id(&initial);
    let kinds: Vec<(bool, u32)> = ops
        .iter()
        .map(|o| match &o.kind {
            OpKind::Write(v) => (true, id(&Some(v.clone()))),
            OpKind::Read(v) => (false, id(v)),
        })
        .collect();
    let mut evs = Events::new(ops);
    let words = ops.len().div_ceil(64);
    let mut linearized = vec![0u64; words];
    let mut seen: HashSet<(Vec<u64>, u32)> = HashSet::new();
    let mut stack: Vec<(usize, u32)> = Vec::new();
    let mut state = init;
    let mut entry = evs.next[0];
    // The deepest configuration reached, for the report.
    let (mut best, mut stuck) = (0usize, 0usize);
    while evs.next[0] != END {
        if entry == END {
            // Cannot happen: a return event always ends the scan of calls before it.
            break;
        }
        let (op, is_call) = evs.ev[entry];
        if is_call {
            let (write, v) = kinds[op];
            let ok = write || v == state;
            if ok {
                let new_state = if write { v } else { state };
                linearized[op / 64] |= 1 << (op % 64);
                if seen.insert((linearized.clone(), new_state)) {
                    stack.push((op, state));
                    state = new_state;
                    evs.lift(op);
                    entry = evs.next[0];
                    continue;
                }
                linearized[op / 64] &= !(1 << (op % 64));
            }
            entry = evs.next[entry];
        } else {
            // A return whose call was not linearized: undo the last choice.
            if stack.len() >= best {
                best = stack.len();
                stuck = op;
            }
            let Some((last, prev_state)) = stack.pop() else {
                return Err(Box::new(Violation {
                    key: key.to_owned(),
                    stuck_at: ops[stuck].clone(),
                    linearized: best,
                    ops: ops.len(),
                }));
            };
            linearized[last / 64] &= !(1 << (last % 64));
            state = prev_state;
            evs.unlift(last);
            entry = evs.next[evs.of_op[last].0];
        }
    }
    Ok(())
}
