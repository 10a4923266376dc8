//! One shared, incrementally maintained answer per watched key: every
//! service the control plane streams (endpoints, profiles, inbound policy)
//! keeps a table of watch channels, recomputed once per store change, with
//! watchers woken only when their answer changed.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::watch;

use crate::store::Snapshot;

/// Watch channels by key.
pub type Watches<K, T> = Mutex<HashMap<K, watch::Sender<Arc<T>>>>;

/// Recomputes every watched key; forgets keys nobody watches.
pub fn refresh<K, T: PartialEq>(watches: &Watches<K, T>, compute: impl Fn(&K) -> T) {
    watches.lock().retain(|key, tx| {
        if tx.receiver_count() == 0 {
            return false;
        }
        let next = compute(key);
        tx.send_if_modified(|current| {
            let changed = **current != next;
            if changed {
                *current = Arc::new(next);
            }
            changed
        });
        true
    });
}

/// A receiver for `key`'s answer, computed now if nobody watches it yet.
pub fn subscribe<K: Hash + Eq + Clone, T>(
    watches: &Watches<K, T>,
    key: &K,
    compute: impl FnOnce() -> T,
) -> watch::Receiver<Arc<T>> {
    // Computed under the lock, so a concurrent refresh cannot be missed.
    watches
        .lock()
        .entry(key.clone())
        .or_insert_with(|| watch::channel(Arc::new(compute())).0)
        .subscribe()
}

/// Calls `apply` with every new snapshot for as long as `owner` lives.
pub fn follow<O: Send + Sync + 'static>(
    store: &watch::Receiver<Arc<Snapshot>>,
    owner: &Arc<O>,
    apply: impl Fn(&O, &Snapshot) + Send + 'static,
) {
    let weak = Arc::downgrade(owner);
    let mut changes = store.clone();
    tokio::spawn(async move {
        while changes.changed().await.is_ok() {
            let Some(owner) = weak.upgrade() else { return };
            let snapshot = changes.borrow_and_update().clone();
            apply(&owner, &snapshot);
        }
    });
}
