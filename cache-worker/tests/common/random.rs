//! For the randomized tests: the seeded generator, the long-run switch, the ledger check of
//! the values they hand out, and the list of what went wrong.

use std::collections::HashSet;

use parking_lot::Mutex;

/// `CACHE_WORKER_LONG=1`: the long variants of the randomized tests.
pub fn long_run() -> bool {
    std::env::var("CACHE_WORKER_LONG").as_deref() == Ok("1")
}

/// splitmix64: a small, seeded, reproducible generator for the randomized tests.
pub struct Rng(pub u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    /// The generator for one decision, from independent parts (seed, key, call number).
    pub fn of(parts: &[u64]) -> Self {
        let mut rng = Rng(0);
        for part in parts {
            rng.0 ^= *part;
            rng.next();
        }
        rng
    }

    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// `n` random bytes.
    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

/// Whether a value read under `key`, which names `(its key, its number)`, names `key` and is
/// one of the numbers `ledger[key]` handed out (`numbers` picks them from the key's entry).
pub fn handed_out<T>(
    ledger: &[Mutex<T>],
    key: u32,
    (its_key, number): (u32, u64),
    numbers: impl FnOnce(&T) -> &HashSet<u64>,
) -> bool {
    its_key == key
        && ledger
            .get(key as usize)
            .is_some_and(|entry| numbers(&entry.lock()).contains(&number))
}

/// What went wrong, collected from every task and thread (a panic in one would hide the
/// others), up to `limit` messages.
pub struct Problems {
    all: Mutex<Vec<String>>,
    limit: usize,
}

impl Problems {
    pub fn new(limit: usize) -> Self {
        Problems {
            all: Mutex::new(Vec::new()),
            limit,
        }
    }

    pub fn push(&self, what: String) {
        let mut all = self.all.lock();
        if all.len() < self.limit {
            all.push(what);
        }
    }

    pub fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.all.lock())
    }
}
