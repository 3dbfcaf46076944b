//! Negative caching (`not_found_ttl`): keys the loader said do not exist, remembered for a
//! while, so that a flood of reads of missing ids reaches upstream once per key and period.
//!
//! They are not entries: no version, no event, not in dumps or stores, never served. Each is
//! forgotten when its time is up, when the key gets a value, or when it is invalidated; in a
//! bounded bucket at most a tenth of the bound is kept, oldest out first.

use std::borrow::Borrow;
use std::collections::VecDeque;
use std::hash::Hash;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

use dashmap::DashMap;
use parking_lot::Mutex;

use crate::bucket::Hasher;

pub(crate) struct Absent<K> {
    ttl_ms: u64,
    /// The most kept at once; `None`: as many as are within their time.
    max: Option<usize>,
    /// Each key and until when (ms) it is known absent.
    until: DashMap<K, u64, Hasher>,
    /// The same keys in the order they were remembered, which is also the order their time
    /// is up in (one `ttl` for all).
    order: Mutex<VecDeque<(K, u64)>>,
    /// `until.len()`, without visiting its shards.
    len: AtomicUsize,
}

impl<K: Eq + Hash + Clone> Absent<K> {
    pub(crate) fn new(ttl_ms: u64, max: Option<usize>) -> Self {
        Absent {
            ttl_ms,
            max,
            until: DashMap::with_hasher(Hasher::default()),
            order: Mutex::new(VecDeque::new()),
            len: AtomicUsize::new(0),
        }
    }

    /// How many keys are remembered now.
    pub(crate) fn len(&self) -> usize {
        self.len.load(Relaxed)
    }

    /// Whether `key` is known absent at `now`.
    pub(crate) fn contains<Q>(&self, key: &Q, now: u64) -> bool
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.len() > 0 && self.until.get(key).is_some_and(|until| *until > now)
    }

    /// Remembers `key` as absent from `now`, and forgets the oldest ones whose time is up or
    /// that are over the limit.
    pub(crate) fn remember(&self, key: K, now: u64) {
        let until = now.saturating_add(self.ttl_ms);
        let mut order = self.order.lock();
        if self.until.insert(key.clone(), until).is_none() {
            self.len.fetch_add(1, Relaxed);
        }
        order.push_back((key, until));
        while let Some((old, old_until)) = order.front() {
            let over = self.max.is_some_and(|max| self.len() > max);
            if *old_until > now && !over {
                break;
            }
            // Only if it is still this remembering: a later one of the key is further back.
            if self
                .until
                .remove_if(old, |_, until| *until == *old_until)
                .is_some()
            {
                self.len.fetch_sub(1, Relaxed);
            }
            order.pop_front();
        }
        // Keys forgotten early stay queued until they come to the front: drop them once they
        // are half of the queue.
        if order.len() > 2 * self.len() + 16 {
            order.retain(|(key, until)| self.until.get(key).is_some_and(|u| *u == *until));
        }
    }

    /// Forgets `key`: it got a value, or was invalidated.
    pub(crate) fn forget<Q>(&self, key: &Q)
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        if self.len() > 0 && self.until.remove(key).is_some() {
            self.len.fetch_sub(1, Relaxed);
        }
    }
}
