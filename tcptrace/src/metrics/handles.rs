//! The sink's own handles to its metrics, by label set.
//!
//! A family's `get_or_create` hashes the whole label set with SipHash and
//! takes the family's lock on every call: with five or more calls per
//! finished socket, that was a fifth of the daemon's reader work in the
//! `replay` example. A metric is a shared handle (an `Arc`) that stays in
//! its family for the process's life (families are never pruned: label
//! values are bounded instead, see `labels.rs`), so the sink keeps a clone
//! of each, found with a fast hash, and asks the family only for a label
//! set it has not met.

use std::{collections::HashMap, hash::Hash};

use prometheus_client::metrics::family::{Family, MetricConstructor};

/// Handles to one family's metrics, by label set.
pub struct Handles<L, M> {
    by_labels: HashMap<L, M, foldhash::fast::FixedState>,
}

impl<L, M> Default for Handles<L, M> {
    fn default() -> Self {
        Handles {
            by_labels: HashMap::default(),
        }
    }
}

impl<L: Clone + Eq + Hash, M: Clone> Handles<L, M> {
    /// The metric of `family` labelled `labels`, created there if new.
    pub fn get<C: MetricConstructor<M>>(&mut self, family: &Family<L, M, C>, labels: L) -> &M {
        self.by_labels
            .entry(labels)
            .or_insert_with_key(|labels| family.get_or_create_owned(labels))
    }
}

#[cfg(test)]
mod tests {
    use prometheus_client::metrics::counter::Counter;

    use super::*;

    #[test]
    fn a_handle_counts_into_its_family() {
        let family: Family<[(&str, String); 1], Counter> = Family::default();
        let mut handles = Handles::default();
        let a = [("close", "reset".to_owned())];
        let b = [("close", "orderly".to_owned())];
        handles.get(&family, a.clone()).inc();
        handles.get(&family, a.clone()).inc();
        handles.get(&family, b.clone()).inc_by(5);
        // Created in the family once, and counted there.
        assert_eq!(family.get_or_create(&a).get(), 2);
        assert_eq!(family.get_or_create(&b).get(), 5);
        // A metric the family gained elsewhere is the one handed out.
        let c = [("close", "timeout".to_owned())];
        family.get_or_create(&c).inc();
        handles.get(&family, c.clone()).inc();
        assert_eq!(family.get_or_create(&c).get(), 2);
    }
}
