//! A doorbell: how the log's writer wakes the threads that follow it, instead of their polling.
//!
//! The statistics' feeding worker is a timely worker: it sleeps in `step_or_park`, which parks its thread (timely
//! unparks it for its own messages). It used to wake every millisecond to look whether the log had moved on —
//! ~900 wake-ups a second with no load at all, ~3 % of a core. Now it sleeps until something rings: the writer
//! rings after each group commit has published its durable position, and a query rings when it is asked. A thread
//! listens by [`Doorbell::listen`] and stops when the returned [`Listening`] drops.
//!
//! Ringing is `Thread::unpark` of every listener: a listener that is not parked yet keeps the token, so its next
//! park returns at once — a ring between "nothing new" and "park" is never lost. Costs one uncontended lock and one
//! futex wake per ring (once per group commit, not per reading).

use std::sync::{Arc, Mutex};
use std::thread::{Thread, ThreadId};

/// Wakes the threads listening to it; cheap to clone (clones ring the same listeners).
#[derive(Clone, Debug, Default)]
pub struct Doorbell {
    listeners: Arc<Mutex<Vec<Thread>>>,
}

impl Doorbell {
    /// Wakes every thread listening now (a parked one returns from its park; one not parked yet does not park
    /// its next time).
    pub fn ring(&self) {
        let listeners = self.listeners.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        for thread in listeners.iter() {
            thread.unpark();
        }
    }

    /// The current thread hears every ring until the returned guard drops.
    pub fn listen(&self) -> Listening {
        let thread = std::thread::current();
        let id = thread.id();
        self.listeners.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).push(thread);
        Listening { listeners: self.listeners.clone(), id }
    }

    /// How many threads listen (for tests).
    #[cfg(test)]
    fn listeners(&self) -> usize {
        self.listeners.lock().map(|l| l.len()).unwrap_or(0)
    }
}

/// A thread listening to a [`Doorbell`]; dropping it stops the listening.
#[derive(Debug)]
pub struct Listening {
    listeners: Arc<Mutex<Vec<Thread>>>,
    id: ThreadId,
}

impl Drop for Listening {
    fn drop(&mut self) {
        let mut listeners = self.listeners.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(at) = listeners.iter().position(|t| t.id() == self.id) {
            listeners.swap_remove(at);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::time::{Duration, Instant};

    #[test]
    fn a_ring_wakes_a_parked_listener() {
        let bell = Doorbell::default();
        let (ready, listening) = mpsc::channel();
        let ringer = bell.clone();
        let listener = std::thread::spawn(move || {
            let _listening = ringer.listen();
            ready.send(()).unwrap();
            let start = Instant::now();
            // Spurious wake-ups may return early; a lost ring would keep it here for the whole minute.
            while start.elapsed() < Duration::from_millis(50) {
                std::thread::park_timeout(Duration::from_secs(60));
            }
            start.elapsed()
        });
        listening.recv().unwrap();
        std::thread::sleep(Duration::from_millis(100));
        bell.ring();
        let slept = listener.join().unwrap();
        assert!(slept < Duration::from_secs(30), "the ring did not wake the listener (it slept {slept:?})");
    }

    #[test]
    fn a_ring_before_the_park_is_not_lost() {
        let bell = Doorbell::default();
        let _listening = bell.listen();
        bell.ring();
        let start = Instant::now();
        std::thread::park_timeout(Duration::from_secs(60));
        assert!(start.elapsed() < Duration::from_secs(30));
    }

    #[test]
    fn a_dropped_listener_stops_listening() {
        let bell = Doorbell::default();
        let first = bell.listen();
        let other = bell.clone();
        std::thread::spawn(move || {
            let _second = other.listen();
            assert_eq!(other.listeners(), 2);
        })
        .join()
        .unwrap();
        assert_eq!(bell.listeners(), 1);
        drop(first);
        assert_eq!(bell.listeners(), 0);
        bell.ring();
    }
}
