//! The suite's random numbers: splitmix64, written out so that a seed replays the same
//! schedule whatever crate versions the build resolves (a seed is the whole recipe of
//! a run).

#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
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
        Rng(self.next_u64())
    }
}
