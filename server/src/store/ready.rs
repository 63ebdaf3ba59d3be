//! Wake-ups by key. A reader of many shards (a subscription, a multi-shard read, a sink)
//! registers one [`ReadySet`] with each shard under a key of its choosing; when a shard's
//! visible tail moves (or the shard is deleted) the shard marks its key. The reader then visits
//! only the marked shards, so an append costs it the same whether it reads one shard or
//! 100,000 idle ones.
//!
//! Guarantees: a key marked after [`ReadySet::take`] returned is in a later `take`; each key is
//! queued at most once until taken; [`ReadySet::ready`] returns once a key is queued (at worst
//! spuriously early, never late). A reader that registers before its first read of a shard
//! therefore never misses an append to it.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

#[derive(Default)]
pub struct ReadySet {
    keys: Mutex<Keys>,
    notify: Notify,
}

#[derive(Default)]
struct Keys {
    queued: HashSet<usize>,
    order: Vec<usize>,
}

impl ReadySet {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Queues `key` (once until taken) and wakes the reader.
    pub fn mark(&self, key: usize) {
        let mut keys = self.keys.lock().expect("ready set lock");
        if keys.queued.insert(key) {
            keys.order.push(key);
            drop(keys);
            self.notify.notify_one();
        }
    }

    /// The queued keys in the order they were first marked, leaving the set empty.
    pub fn take(&self) -> Vec<usize> {
        let mut keys = self.keys.lock().expect("ready set lock");
        keys.queued.clear();
        std::mem::take(&mut keys.order)
    }

    pub fn is_empty(&self) -> bool {
        self.keys.lock().expect("ready set lock").order.is_empty()
    }

    /// Resolves once a key is queued. Cancel-safe: a mark is never lost by dropping this.
    pub async fn ready(&self) {
        // `notify_one` leaves a permit when nobody waits, so a mark between the check and the
        // wait still ends the wait.
        while self.is_empty() {
            self.notify.notified().await;
        }
    }
}

/// The sets registered with one shard, each with its key there.
#[derive(Default)]
pub(crate) struct Listeners(Mutex<Vec<(std::sync::Weak<ReadySet>, usize)>>);

impl Listeners {
    /// Adds `set` under `key`, dropping sets their readers have let go of.
    pub fn register(&self, set: &Arc<ReadySet>, key: usize) {
        let mut l = self.0.lock().expect("listeners lock");
        l.retain(|(w, _)| w.strong_count() > 0);
        l.push((Arc::downgrade(set), key));
    }

    /// Marks every live set's key.
    pub fn wake(&self) {
        let mut l = self.0.lock().expect("listeners lock");
        l.retain(|(w, key)| match w.upgrade() {
            Some(set) => {
                set.mark(*key);
                true
            }
            None => false,
        });
    }

    /// Whether any registered set is still held by a reader.
    pub fn any_live(&self) -> bool {
        self.0
            .lock()
            .expect("listeners lock")
            .iter()
            .any(|(w, _)| w.strong_count() > 0)
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.0.lock().expect("listeners lock").len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn marks_are_queued_once_and_never_lost() {
        let set = ReadySet::new();
        set.mark(3);
        set.mark(1);
        set.mark(3);
        assert_eq!(set.take(), vec![3, 1]);
        assert!(set.take().is_empty());
        // A mark while nobody waits still ends the next wait.
        set.mark(7);
        tokio::time::timeout(std::time::Duration::from_secs(5), set.ready())
            .await
            .expect("a queued key ends the wait");
        assert_eq!(set.take(), vec![7]);
        // A waiter is woken by a later mark.
        let waiter = {
            let set = set.clone();
            tokio::spawn(async move { set.ready().await })
        };
        tokio::task::yield_now().await;
        set.mark(2);
        tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
            .await
            .expect("woken")
            .unwrap();
    }

    #[test]
    fn dropped_sets_leave_the_listeners() {
        let listeners = Listeners::default();
        let kept = ReadySet::new();
        listeners.register(&kept, 0);
        for i in 0..100 {
            listeners.register(&ReadySet::new(), i);
        }
        // Each registration drops the dead ones before it.
        assert_eq!(listeners.len(), 2);
        listeners.wake();
        assert_eq!(listeners.len(), 1);
        assert_eq!(kept.take(), vec![0]);
    }
}
