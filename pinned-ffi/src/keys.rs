//! Key routing for a [`Pool`](crate::Pool): by hash (stateless), or sticky
//! to the worker that was least loaded when the key was first seen, in a
//! bounded table that forgets the least recently used key.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

/// How a [`Pool`](crate::Pool) maps a key to a worker
/// ([`Pool::keyed`](crate::Pool::keyed), [`Pool::run_keyed`](crate::Pool::run_keyed),
/// [`Pool::for_key`](crate::Pool::for_key)).
///
/// ```
/// use pinned_ffi::{KeyRouting, Pool};
/// let pool = Pool::builder(2)
///     .key_routing(KeyRouting::LeastLoaded)
///     .spawn(|i| Ok::<_, std::io::Error>(i))?;
/// // Two keys seen one after the other go to different workers...
/// let a = pool.run_keyed("tenant-a", |i| *i)?;
/// let b = pool.run_keyed("tenant-b", |i| *i)?;
/// assert_ne!(a, b);
/// // ...and stick there.
/// assert_eq!(pool.run_keyed("tenant-a", |i| *i)?, a);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum KeyRouting {
    /// The key's hash picks the worker (the default): no table, the same
    /// key always gives the same worker, but two hot keys may share one
    /// owner while another idles.
    #[default]
    Hash,
    /// The first time a key is seen it goes to the least-loaded healthy
    /// worker (jobs queued plus the pool's blocking calls in flight; ties
    /// go to the worker holding the fewest keys, then the first), and it
    /// sticks to that worker afterwards. The table holds at most
    /// [`PoolBuilder::key_table`](crate::PoolBuilder::key_table) keys
    /// (default [`KeyRouting::DEFAULT_TABLE`]); when it is full, the least
    /// recently used key is forgotten, and if it comes back it is placed
    /// afresh, possibly on another worker. Keys are told apart by their
    /// 64-bit hash. Each keyed call takes a short lock on the table.
    LeastLoaded,
}

impl KeyRouting {
    /// The default size of the sticky table (4096 keys).
    pub const DEFAULT_TABLE: usize = 4096;
}

/// The sticky table: key hash → worker, least recently used first out.
#[derive(Debug)]
pub(crate) struct KeyTable {
    capacity: usize,
    inner: Mutex<Lru>,
}

#[derive(Debug)]
struct Lru {
    /// Key hash → (worker, last use).
    keys: HashMap<u64, (usize, u64)>,
    /// Last use → key hash: the oldest first.
    by_use: BTreeMap<u64, u64>,
    /// Keys held per worker.
    per_worker: Vec<usize>,
    clock: u64,
}

impl KeyTable {
    pub(crate) fn new(capacity: usize, workers: usize) -> Self {
        KeyTable {
            capacity: capacity.max(1),
            inner: Mutex::new(Lru {
                keys: HashMap::new(),
                by_use: BTreeMap::new(),
                per_worker: vec![0; workers],
                clock: 0,
            }),
        }
    }

    /// The worker for `key`: the one it stuck to, or `place(keys held per
    /// worker)` for a key not (or no longer) in the table.
    pub(crate) fn worker_for(&self, key: u64, place: impl FnOnce(&[usize]) -> usize) -> usize {
        let mut t = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        t.clock += 1;
        let now = t.clock;
        if let Some(&(worker, used)) = t.keys.get(&key) {
            t.by_use.remove(&used);
            t.by_use.insert(now, key);
            t.keys.insert(key, (worker, now));
            return worker;
        }
        if t.keys.len() >= self.capacity {
            if let Some((_, old)) = t.by_use.pop_first() {
                if let Some((w, _)) = t.keys.remove(&old) {
                    t.per_worker[w] -= 1;
                }
            }
        }
        let worker = place(&t.per_worker);
        t.per_worker[worker] += 1;
        t.keys.insert(key, (worker, now));
        t.by_use.insert(now, key);
        worker
    }

    /// Keys in the table now.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).keys.len()
    }
}

#[cfg(all(test, not(pinned_loom)))]
mod tests {
    use super::KeyTable;

    #[test]
    fn the_least_recently_used_key_is_forgotten_when_the_table_is_full() {
        let t = KeyTable::new(2, 2);
        let fewest = |held: &[usize]| (0..held.len()).min_by_key(|&i| held[i]).unwrap();
        assert_eq!(t.worker_for(1, fewest), 0);
        assert_eq!(t.worker_for(2, fewest), 1);
        assert_eq!(t.worker_for(1, |_| unreachable!("key 1 is sticky")), 0); // 2 is now the oldest
        assert_eq!(t.worker_for(3, fewest), 1, "2 forgotten: worker 1 holds no key");
        assert_eq!(t.len(), 2);
        assert_eq!(t.worker_for(1, |_| unreachable!("key 1 is kept")), 0);
        assert_eq!(t.worker_for(2, |_| 0), 0, "2 comes back and is placed afresh");
    }
}
