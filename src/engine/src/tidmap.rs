//! Thread ids across PID namespaces.
//!
//! The companion records `gettid()`: the thread's id in its *own* PID
//! namespace. A target in a container numbers its threads 1, 2, 3..., while
//! `/proc`, ptrace and every file we write use the ids of our namespace. The
//! `NSpid:` line of `/proc/PID/task/TID/status` lists a thread's id in every
//! namespace from ours down to its own; [`TidMap`] turns the last one back
//! into the first.
//!
//! The map is built once per target and rebuilt when an id it does not know
//! appears (a thread started since). A target in our own namespace (one id
//! in `NSpid:`) costs nothing per read: ids are used as they are.

use crate::proc;
use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

/// Least time between two rebuilds triggered by unknown ids. A registry full
/// of garbage ids (a hostile or corrupted target) must not make every read
/// list and read every thread; a real new thread is found at the next read.
const MIN_REBUILD_GAP: Duration = Duration::from_millis(50);

/// Unknown ids remembered (so each costs one rebuild at most); past this the
/// set is cleared rather than grown.
const MAX_MISSES: usize = 4096;

/// Maps thread ids as a target's PID namespace numbers them to ours.
#[derive(Debug)]
pub struct TidMap {
    pid: i32,
    /// The target lives in our PID namespace: every id is already ours.
    identity: bool,
    /// Innermost id -> our id.
    map: HashMap<u32, u32>,
    /// Ids that were still unknown right after a rebuild.
    misses: HashSet<u32>,
    last_rebuild: Option<Instant>,
    rebuilds: u64,
}

impl TidMap {
    /// The identity map: for a target in our namespace, or a kernel without
    /// `NSpid:` (before 4.1), where nothing better can be known.
    pub fn identity(pid: i32) -> TidMap {
        TidMap {
            pid,
            identity: true,
            map: HashMap::new(),
            misses: HashSet::new(),
            last_rebuild: None,
            rebuilds: 0,
        }
    }

    /// A map from known threads (pure): each entry is our id of a thread and
    /// its `NSpid:` ids. An entry with a single id, or none at all, means the
    /// target shares our namespace: the identity.
    pub fn from_threads(pid: i32, threads: &[(i32, Vec<i32>)]) -> TidMap {
        let mut m = TidMap::identity(pid);
        let nested = threads.iter().any(|(_, ns)| ns.len() > 1);
        if nested {
            m.identity = false;
            m.fill(threads);
        }
        m
    }

    /// Builds the map of `pid` from `/proc`: one read of the main thread's
    /// status when the target shares our namespace, one per thread otherwise.
    pub fn build(pid: i32) -> TidMap {
        match proc::read_task_nspid(pid, pid) {
            Ok(Some(ns)) if ns.len() > 1 => {
                let mut m = TidMap::identity(pid);
                m.identity = false;
                m.rebuild();
                m
            }
            _ => TidMap::identity(pid),
        }
    }

    /// Whether ids are used as they are (target in our namespace).
    pub fn is_identity(&self) -> bool {
        self.identity
    }

    /// How often the map was rebuilt after it was first built.
    pub fn rebuilds(&self) -> u64 {
        self.rebuilds.saturating_sub(1)
    }

    fn fill(&mut self, threads: &[(i32, Vec<i32>)]) {
        self.map.clear();
        for (ours, ns) in threads {
            if let (Ok(ours), Some(Ok(inner))) =
                (u32::try_from(*ours), ns.last().map(|&i| u32::try_from(i)))
            {
                self.map.insert(inner, ours);
            }
        }
    }

    fn rebuild(&mut self) {
        self.rebuilds = self.rebuilds.saturating_add(1);
        self.last_rebuild = Some(Instant::now());
        self.misses.clear();
        let tids = proc::list_tasks(self.pid).unwrap_or_default();
        let threads: Vec<(i32, Vec<i32>)> = tids
            .into_iter()
            .filter_map(|t| Some((t, proc::read_task_nspid(self.pid, t).ok()??)))
            .collect();
        self.fill(&threads);
    }

    /// Our id of the thread the target calls `ns_tid`; `None` if no thread of
    /// the target has that id (it exited, or the id is garbage). 0 stays 0.
    pub fn to_ours(&mut self, ns_tid: u32) -> Option<u32> {
        if self.identity || ns_tid == 0 {
            return Some(ns_tid);
        }
        if let Some(&t) = self.map.get(&ns_tid) {
            return Some(t);
        }
        if self.misses.contains(&ns_tid) {
            return None;
        }
        let recent = self
            .last_rebuild
            .is_some_and(|t| t.elapsed() < MIN_REBUILD_GAP);
        if recent {
            return None;
        }
        self.rebuild();
        match self.map.get(&ns_tid) {
            Some(&t) => Some(t),
            None => {
                if self.misses.len() >= MAX_MISSES {
                    self.misses.clear();
                }
                self.misses.insert(ns_tid);
                None
            }
        }
    }

    /// Maps every thread id of `reading` in place (loops and poll board);
    /// an id that cannot be mapped becomes 0, never a number that could
    /// name another thread. `ns_tid` keeps the id as written.
    pub fn map_registry(&mut self, reg: &mut crate::heartbeat::Registry) {
        if self.identity {
            return;
        }
        for l in &mut reg.loops {
            l.tid = self.to_ours(l.ns_tid).unwrap_or(0);
            for p in &mut l.polling {
                p.tid = self.to_ours(p.ns_tid).unwrap_or(0);
            }
        }
        for p in &mut reg.polling {
            p.tid = self.to_ours(p.ns_tid).unwrap_or(0);
        }
        for w in &mut reg.workers {
            w.tid = w.ns_tid.and_then(|t| self.to_ours(t));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_namespace_is_the_identity() {
        let mut m = TidMap::from_threads(100, &[(100, vec![100]), (101, vec![101])]);
        assert!(m.is_identity());
        assert_eq!(m.to_ours(101), Some(101));
        assert_eq!(m.to_ours(7), Some(7), "no lookups outside containers");
        let mut m = TidMap::from_threads(100, &[]);
        assert!(m.is_identity());
        assert_eq!(m.to_ours(5), Some(5));
    }

    #[test]
    fn nested_ids_map_innermost_to_ours() {
        // A container (6, 7) inside a pod sandbox (2, 3) on the host.
        let threads = [(15038, vec![15038, 2, 6]), (15040, vec![15040, 3, 7])];
        let mut m = TidMap::from_threads(i32::MAX, &threads);
        assert!(!m.is_identity());
        assert_eq!(m.to_ours(6), Some(15038));
        assert_eq!(m.to_ours(7), Some(15040));
        assert_eq!(m.to_ours(0), Some(0));
        // Unknown: a rebuild of a process that does not exist finds nothing,
        // and the miss is remembered.
        assert_eq!(m.to_ours(9), None);
        assert_eq!(m.to_ours(9), None);
        assert_eq!(m.rebuilds(), 0, "first rebuild counts as the build");
    }

    #[test]
    fn a_registry_is_mapped_in_place_and_unknown_ids_become_zero() {
        let threads = [(500, vec![500, 1]), (501, vec![501, 2])];
        let mut m = TidMap::from_threads(i32::MAX, &threads);
        let poll = |tid| crate::heartbeat::Polling {
            entry: 0,
            tid,
            ns_tid: tid,
            task: String::new(),
            task_id: None,
            file: String::new(),
            line: 0,
            since_ns: 1,
            kind: crate::heartbeat::PollKind::Future,
            loop_slot: None,
        };
        let lp = crate::heartbeat::Loop {
            slot: 0,
            name: "main".into(),
            tid: 1,
            ns_tid: 1,
            period_ns: 0,
            ticks: 0,
            last_tick_ns: 0,
            registered_ns: 0,
            settled: true,
            next_due_ns: None,
            lags: Vec::new(),
            polling: vec![poll(1)],
        };
        let mut reg = crate::heartbeat::Registry {
            offset: 0,
            abi_minor: 1,
            crate_version: String::new(),
            refused: 0,
            slot_count: 1,
            unsettled_slots: 0,
            loops: vec![lp],
            poll_entries: 2,
            poll_refused: 0,
            unsettled_polls: 0,
            poll_problem: None,
            polling: vec![poll(1), poll(2), poll(3)],
            worker_entries: 1,
            worker_refused: 0,
            unsettled_workers: 0,
            worker_problem: None,
            workers: vec![crate::heartbeat::Worker {
                entry: 0,
                tid: Some(2),
                ns_tid: Some(2),
                loop_slot: Some(0),
                index: 0,
                workers: 1,
                parked: false,
                current_thread: false,
                since_ns: Some(1),
                after_ns: 0,
                sampled_ns: 1,
                next_ns: 2,
            }],
        };
        // Worker ids are mapped too (on a fresh map: below, the unknown poll
        // id 3 makes `m` rebuild from a process that does not exist).
        let mut only_workers = reg.clone();
        only_workers.loops.clear();
        only_workers.polling.clear();
        TidMap::from_threads(i32::MAX, &threads).map_registry(&mut only_workers);
        assert_eq!(only_workers.workers[0].tid, Some(501));
        m.map_registry(&mut reg);
        assert_eq!((reg.loops[0].tid, reg.loops[0].ns_tid), (500, 1));
        assert_eq!(reg.loops[0].polling[0].tid, 500);
        let tids: Vec<(u32, u32)> = reg.polling.iter().map(|p| (p.tid, p.ns_tid)).collect();
        assert_eq!(tids, [(500, 1), (501, 2), (0, 3)]);
    }

    #[test]
    fn build_on_ourselves_is_the_identity() {
        let me = std::process::id() as i32;
        let mut m = TidMap::build(me);
        assert!(m.is_identity());
        assert_eq!(m.to_ours(me as u32), Some(me as u32));
    }
}
