//! The tracker's bounded tables: the lives it tracks (least recently active
//! evicted first), and [`RecentMap`]s that forget by count and by age.
//!
//! Ordered maps come from `hashlink`; hashing from `foldhash`.

use std::{
    collections::{BTreeSet, HashMap},
    hash::{BuildHasher, Hash, RandomState},
};

use hashlink::LinkedHashMap;

use super::Tracked;
use crate::model::Role;

/// Hashing for keys that no remote peer chooses (kernel addresses, pids,
/// local ports). Keys made of remote addresses keep the std's keyed SipHash.
pub type FastHash = foldhash::fast::FixedState;

/// A map that forgets: at most `cap` entries, and none older than `max_age_ns`
/// of event time, so that no input can grow it without bound. The oldest
/// inserted entry goes first.
///
/// Kept by hand (over `hashlink`'s insertion-ordered map) because LRU crates
/// bound by count only: the age here is event time, carried by each entry.
#[derive(Debug)]
pub struct RecentMap<K, V, S = RandomState> {
    /// Oldest insertion at the front; a re-insert moves to the back.
    map: LinkedHashMap<K, Aged<V>, S>,
    cap: usize,
    max_age_ns: Option<u64>,
}

#[derive(Debug)]
struct Aged<V> {
    ts_ns: u64,
    value: V,
}

impl<K: Hash + Eq, V, S: BuildHasher + Default> RecentMap<K, V, S> {
    pub fn new(cap: usize, max_age_ns: Option<u64>) -> Self {
        RecentMap {
            map: LinkedHashMap::with_hasher(S::default()),
            cap: cap.max(1),
            max_age_ns,
        }
    }

    pub fn insert(&mut self, key: K, ts_ns: u64, value: V) {
        self.map.insert(key, Aged { ts_ns, value });
        self.prune(ts_ns);
    }

    /// The entry for `key`, unless it is too old at `now_ns`.
    pub fn get(&self, key: &K, now_ns: u64) -> Option<&V> {
        // Skips hashing the key when there is nothing to find (the usual case).
        if self.map.is_empty() {
            return None;
        }
        self.map
            .get(key)
            .filter(|e| !self.too_old(e.ts_ns, now_ns))
            .map(|e| &e.value)
    }

    pub fn get_mut(&mut self, key: &K) -> Option<&mut V> {
        if self.map.is_empty() {
            return None;
        }
        self.map.get_mut(key).map(|e| &mut e.value)
    }

    pub fn remove(&mut self, key: &K) -> Option<V> {
        if self.map.is_empty() {
            return None;
        }
        self.map.remove(key).map(|e| e.value)
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    fn too_old(&self, ts_ns: u64, now_ns: u64) -> bool {
        self.max_age_ns
            .is_some_and(|age| now_ns.saturating_sub(ts_ns) > age)
    }

    /// Drops entries past the cap or too old at `now_ns`, oldest first.
    /// Returns how many entries went.
    pub fn prune(&mut self, now_ns: u64) -> usize {
        self.prune_each(now_ns, |_| {})
    }

    /// [`RecentMap::prune`], handing each value that goes to `gone`.
    pub fn prune_each(&mut self, now_ns: u64, mut gone: impl FnMut(V)) -> usize {
        let before = self.map.len();
        while let Some((_, e)) = self.map.front() {
            if self.map.len() <= self.cap && !self.too_old(e.ts_ns, now_ns) {
                break;
            }
            if let Some((_, e)) = self.map.pop_front() {
                gone(e.value);
            }
        }
        before - self.map.len()
    }

    /// Empties the map, handing each value to `gone`.
    pub fn drain_each(&mut self, mut gone: impl FnMut(V)) {
        while let Some((_, e)) = self.map.pop_front() {
            gone(e.value);
        }
    }
}

/// The lives being tracked, by `skaddr`, least recently active first; the
/// linger deadlines of closed ones; listeners by port.
pub(super) struct Lives {
    map: LinkedHashMap<u64, Tracked, FastHash>,
    /// (deadline, skaddr) of closed lives.
    lingering: BTreeSet<(u64, u64)>,
    /// Listening port → listener skaddrs (from CLOSE→LISTEN).
    listeners: HashMap<u16, Vec<u64>, FastHash>,
}

impl Lives {
    pub(super) fn new() -> Lives {
        Lives {
            map: LinkedHashMap::with_hasher(FastHash::default()),
            lingering: BTreeSet::new(),
            listeners: HashMap::default(),
        }
    }

    pub(super) fn len(&self) -> usize {
        self.map.len()
    }

    pub(super) fn contains(&self, skaddr: u64) -> bool {
        self.map.contains_key(&skaddr)
    }

    pub(super) fn get(&self, skaddr: u64) -> Option<&Tracked> {
        self.map.get(&skaddr)
    }

    /// The life of `skaddr`, leaving its place in the eviction order.
    pub(super) fn get_mut(&mut self, skaddr: u64) -> Option<&mut Tracked> {
        self.map.get_mut(&skaddr)
    }

    /// The life of `skaddr`, now the most recently active.
    pub(super) fn touch(&mut self, skaddr: u64) -> Option<&mut Tracked> {
        self.map.to_back(&skaddr)
    }

    pub(super) fn iter(&self) -> impl Iterator<Item = (u64, &Tracked)> {
        self.map.iter().map(|(&sk, t)| (sk, t))
    }

    pub(super) fn values_mut(&mut self) -> impl Iterator<Item = &mut Tracked> {
        self.map.values_mut()
    }

    /// Starts tracking `t` as the most recently active.
    pub(super) fn insert(&mut self, skaddr: u64, t: Tracked) {
        if t.life.role == Role::Listener {
            let port = t.life.local.port();
            self.listeners.entry(port).or_default().push(skaddr);
        }
        self.map.insert(skaddr, t);
    }

    /// Listeners on `port`, by skaddr.
    pub(super) fn listeners(&self, port: u16) -> &[u64] {
        self.listeners.get(&port).map_or(&[], Vec::as_slice)
    }

    /// Stops tracking `skaddr`.
    pub(super) fn take(&mut self, skaddr: u64) -> Option<Tracked> {
        let t = self.map.remove(&skaddr)?;
        Some(self.forget(skaddr, t))
    }

    /// Stops tracking the least recently active life.
    pub(super) fn take_least_recent(&mut self) -> Option<(u64, Tracked)> {
        let (skaddr, t) = self.map.pop_front()?;
        Some((skaddr, self.forget(skaddr, t)))
    }

    /// Drops what refers to `skaddr`, now out of the map.
    fn forget(&mut self, skaddr: u64, t: Tracked) -> Tracked {
        if let Some(d) = t.deadline {
            self.lingering.remove(&(d, skaddr));
        }
        let port = t.life.local.port();
        if t.life.role == Role::Listener
            && let Some(list) = self.listeners.get_mut(&port)
        {
            list.retain(|&sk| sk != skaddr);
            if list.is_empty() {
                self.listeners.remove(&port);
            }
        }
        t
    }

    /// Moves `skaddr` in the linger order from deadline `was` to `now`, as
    /// its life's `deadline` just changed (`None`: not lingering).
    pub(super) fn reschedule(&mut self, skaddr: u64, was: Option<u64>, now: Option<u64>) {
        if let Some(d) = was {
            self.lingering.remove(&(d, skaddr));
        }
        if let Some(d) = now {
            self.lingering.insert((d, skaddr));
        }
    }

    /// Stops tracking a life whose deadline has passed at `now_ns`, earliest
    /// deadline first.
    pub(super) fn take_expired(&mut self, now_ns: u64) -> Option<Tracked> {
        loop {
            let &(deadline, skaddr) = self.lingering.first()?;
            if deadline > now_ns {
                return None;
            }
            self.lingering.pop_first();
            if let Some(t) = self.take(skaddr) {
                return Some(t);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tracker::{AUX_CAP, AUX_MAX_AGE_NS};

    #[test]
    fn recent_maps_are_bounded_by_count_and_age() {
        let mut m: RecentMap<u32, u32> = RecentMap::new(AUX_CAP, Some(AUX_MAX_AGE_NS));
        for i in 0..5000 {
            m.insert(i, u64::from(i), i);
        }
        assert_eq!(m.len(), AUX_CAP);
        assert_eq!(m.get(&0, 5000), None);
        assert_eq!(m.get(&4999, 5000), Some(&4999));
        // Re-inserting one key many times keeps one entry, the newest.
        for i in 0..100_000u64 {
            m.insert(7, i, 7);
        }
        assert_eq!(m.len(), AUX_CAP);
        // Age: one fresh insert ten seconds later sweeps the old ones out.
        m.insert(1, AUX_MAX_AGE_NS + 200_000, 1);
        assert_eq!(m.len(), 1);
        assert_eq!(
            m.get(&1, 3 * AUX_MAX_AGE_NS),
            None,
            "too old when looked up"
        );
    }

    #[test]
    fn a_reinserted_key_is_the_newest() {
        let mut m: RecentMap<u32, u32> = RecentMap::new(2, None);
        m.insert(1, 0, 1);
        m.insert(2, 0, 2);
        m.insert(1, 0, 10);
        m.insert(3, 0, 3);
        assert_eq!((m.get(&1, 0), m.get(&2, 0)), (Some(&10), None));
        // Updating in place does not make it newer.
        *m.get_mut(&1).unwrap() += 1;
        m.insert(4, 0, 4);
        assert_eq!((m.get(&1, 0), m.get(&3, 0)), (None, Some(&3)));
    }
}
