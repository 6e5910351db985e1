//! The order the run worker takes queued benchmark runs in (issue 16): round robin across authors, so one author's
//! queue never holds everyone else's back; members' runs before demo guests'; and a bound on all queued runs.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Condvar, Mutex};

/// Who queued a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Author {
    pub id: i64,
    pub guest: bool,
}

/// A fair queue of `T` (see the module note). `push` refuses past `capacity`; `pop` blocks until something is queued.
pub struct Schedule<T> {
    capacity: usize,
    state: Mutex<State<T>>,
    ready: Condvar,
}

struct State<T> {
    /// Per class (members = false first, guests = true), per author: their runs in order.
    queues: BTreeMap<bool, BTreeMap<i64, VecDeque<T>>>,
    /// Per class, the author served last (the next one after it goes first).
    last: BTreeMap<bool, i64>,
    len: usize,
}

impl<T> Schedule<T> {
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            state: Mutex::new(State { queues: BTreeMap::new(), last: BTreeMap::new(), len: 0 }),
            ready: Condvar::new(),
        }
    }

    /// Queues `item` for `author`; gives it back when [`Schedule::new`]'s capacity is reached.
    pub fn push(&self, author: Author, item: T) -> Result<(), T> {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if s.len >= self.capacity {
            return Err(item);
        }
        s.queues.entry(author.guest).or_default().entry(author.id).or_default().push_back(item);
        s.len += 1;
        self.ready.notify_one();
        Ok(())
    }

    /// Queues `item` ahead of the bound (runs resumed after a restart were accepted before it).
    pub fn push_resumed(&self, author: Author, item: T) {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        s.queues.entry(author.guest).or_default().entry(author.id).or_default().push_back(item);
        s.len += 1;
        self.ready.notify_one();
    }

    fn take(s: &mut State<T>) -> Option<T> {
        let class = s.queues.iter().find(|(_, q)| !q.is_empty()).map(|(c, _)| *c)?;
        let last = s.last.get(&class).copied();
        let queues = s.queues.get_mut(&class)?;
        // The first author after the one served last, wrapping around.
        let author = last
            .and_then(|l| queues.range(l + 1..).next().map(|(a, _)| *a))
            .or_else(|| queues.keys().next().copied())?;
        let q = queues.get_mut(&author)?;
        let item = q.pop_front();
        if q.is_empty() {
            queues.remove(&author);
        }
        if queues.is_empty() {
            s.queues.remove(&class);
        }
        s.last.insert(class, author);
        s.len -= usize::from(item.is_some());
        item
    }

    /// The next run, waiting for one.
    pub fn pop(&self) -> T {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if let Some(item) = Self::take(&mut s) {
                return item;
            }
            s = self.ready.wait(s).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// Runs queued now.
    pub fn len(&self) -> usize {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).len
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const fn member(id: i64) -> Author {
        Author { id, guest: false }
    }

    #[test]
    fn authors_take_turns_members_first_within_a_bound() {
        let q = Schedule::new(7);
        // Alice queues three runs before Bob queues one and a guest two: Bob does not wait for all of Alice's.
        for r in ["a1", "a2", "a3"] {
            q.push(member(1), r).unwrap();
        }
        q.push(Author { id: 9, guest: true }, "g1").unwrap();
        q.push(Author { id: 9, guest: true }, "g2").unwrap();
        q.push(member(2), "b1").unwrap();
        q.push(member(3), "c1").unwrap();
        assert_eq!(q.push(member(4), "d1"), Err("d1"), "the bound");
        assert_eq!(q.len(), 7);
        let order: Vec<_> = (0..7).map(|_| q.pop()).collect();
        assert_eq!(order, ["a1", "b1", "c1", "a2", "a3", "g1", "g2"]);
        assert_eq!(q.len(), 0);
        // A resumed run is queued past the bound.
        for i in 0..8 {
            q.push_resumed(member(i), "r");
        }
        assert_eq!(q.len(), 8);
    }
}
