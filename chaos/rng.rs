//! The suite's random numbers: the project's splitmix64 (`wulfpack::sim::Rng`, written
//! out there so that a seed replays the same schedule whatever crate versions the build
//! resolves: a seed is the whole recipe of a run), with the draws the schedule needs.

#[derive(Debug, Clone)]
pub struct Rng(wulfpack::sim::Rng);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(wulfpack::sim::Rng::new(seed))
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0.next_u64()
    }

    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next_u64() % (hi - lo + 1)
    }

    pub fn pick<'a, T>(&mut self, from: &'a [T]) -> &'a T {
        &from[(self.next_u64() % from.len() as u64) as usize]
    }

    /// A generator for a sub-part (a client, a DHCP loop) that does not disturb this one's
    /// sequence beyond one draw.
    pub fn fork(&mut self) -> Rng {
        Rng::new(self.next_u64())
    }
}
