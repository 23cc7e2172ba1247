//! The per-loop hang state machine: pure, driven by observations, so every
//! rule (one episode per hang, dumps a gap apart, recovery, slow ticks) is
//! unit-tested without processes or clocks.
//!
//! Times are the watcher's CLOCK_MONOTONIC in ns; stalls are how long the
//! loop's next tick is overdue (see `aiodebug_engine::heartbeat::LoopStats`).

/// What the watch asks of the tracker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Config {
    /// A loop overdue by more than this is hung.
    pub interval_ns: u64,
    /// Snapshots per episode.
    pub dumps: u32,
    /// Time between snapshots of one episode.
    pub gap_ns: u64,
    /// Stalls past this (but not past the interval) are slow ticks.
    pub slow_ns: Option<u64>,
}

impl Config {
    /// A stall this long takes the cause's baseline sample (see
    /// [`crate::cause::LoopCause::observe`]): a quarter of the first
    /// threshold the stall may cross, so the window before a hang or a
    /// slow tick is three quarters of it.
    pub fn baseline_ns(&self) -> u64 {
        self.slow_ns
            .map_or(self.interval_ns, |s| s.min(self.interval_ns))
            / 4
    }

    /// How overdue a loop must be for its thread's system calls to be
    /// counted (see [`crate::cause::LoopCause::observe`]): a quarter of the
    /// interval, `--slow` or not. Opening and closing the tracepoint costs
    /// the watcher 10-40 ms and every CPU of the host an IPI: affordable
    /// once per hang, not once per slow tick (at `--slow 0.02` on a loop
    /// ticking every 10 ms it held the looks up enough to miss slow ones).
    pub fn count_ns(&self) -> u64 {
        self.interval_ns / 4
    }
}

/// One observation of a loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Observation {
    /// Watcher's clock.
    pub now_ns: u64,
    /// How long the next tick is overdue.
    pub stall_ns: u64,
    /// Whether the loop ticked since the previous observation.
    pub ticked: bool,
    /// Largest lag among the ticks since the previous observation.
    pub new_max_lag_ns: u64,
    /// Whether the process is stopped (job control, debugger): no new episodes.
    pub stopped: bool,
}

/// What the watch must do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// A hang began (stall past the interval): announce it, count it.
    HangStarted {
        /// Stall at detection.
        stall_ns: u64,
    },
    /// Take snapshot `index` (0-based) of the current episode.
    Dump {
        /// Index within the episode.
        index: u32,
        /// The loop's stall at this moment (0 once it recovered).
        stall_ns: u64,
    },
    /// The hung loop ticks again.
    Recovered {
        /// How long it was blocked: the largest lag of the ticks that ended it,
        /// or the longest stall seen if that is larger.
        hang_ns: u64,
    },
    /// A stall passed the slow threshold: capture the loop's thread now.
    SlowStarted,
    /// The slow stall ended before becoming a hang: report it.
    SlowEnded {
        /// How long the loop was blocked.
        blocked_ns: u64,
    },
    /// The slow stall turned into a hang: drop the captured frames.
    SlowAbandoned,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Episode {
    started_ns: u64,
    dumps_due: u32,
    recovered: bool,
    max_stall_ns: u64,
}

/// Hang tracking for one loop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tracker {
    cfg: Config,
    episode: Option<Episode>,
    slow: bool,
}

impl Tracker {
    /// A tracker for a healthy loop.
    pub fn new(cfg: Config) -> Tracker {
        Tracker {
            cfg,
            episode: None,
            slow: false,
        }
    }

    /// Whether an episode is under way (hung, or its snapshots not all taken).
    pub fn in_episode(&self) -> bool {
        self.episode.is_some()
    }

    /// Whether the loop is hung right now.
    pub fn is_hung(&self) -> bool {
        self.episode.is_some_and(|e| !e.recovered)
    }

    /// Feeds one observation; returns the actions in the order to perform them.
    pub fn observe(&mut self, o: Observation) -> Vec<Action> {
        let mut actions = Vec::new();
        if let Some(ep) = &mut self.episode {
            ep.max_stall_ns = ep.max_stall_ns.max(o.stall_ns);
            if !ep.recovered && o.ticked && o.stall_ns <= self.cfg.interval_ns {
                ep.recovered = true;
                actions.push(Action::Recovered {
                    hang_ns: o.new_max_lag_ns.max(ep.max_stall_ns),
                });
            }
            let taken = self.cfg.dumps - ep.dumps_due;
            // A stopped process (job control, a debugger) is not the hang:
            // its remaining snapshots wait until it runs again.
            if ep.dumps_due > 0
                && !o.stopped
                && o.now_ns >= ep.started_ns + u64::from(taken) * self.cfg.gap_ns
            {
                ep.dumps_due -= 1;
                actions.push(Action::Dump {
                    index: taken,
                    stall_ns: if ep.recovered { 0 } else { o.stall_ns },
                });
            }
            if ep.recovered && ep.dumps_due == 0 {
                self.episode = None;
            }
            return actions;
        }
        if o.stall_ns > self.cfg.interval_ns && !o.stopped {
            if self.slow {
                self.slow = false;
                actions.push(Action::SlowAbandoned);
            }
            actions.push(Action::HangStarted {
                stall_ns: o.stall_ns,
            });
            let mut ep = Episode {
                started_ns: o.now_ns,
                dumps_due: self.cfg.dumps,
                recovered: false,
                max_stall_ns: o.stall_ns,
            };
            if ep.dumps_due > 0 {
                ep.dumps_due -= 1;
                actions.push(Action::Dump {
                    index: 0,
                    stall_ns: o.stall_ns,
                });
            }
            self.episode = Some(ep);
            return actions;
        }
        if let Some(slow_ns) = self.cfg.slow_ns {
            if !self.slow && o.stall_ns > slow_ns && !o.stopped {
                self.slow = true;
                actions.push(Action::SlowStarted);
            } else if self.slow && o.ticked && o.stall_ns <= slow_ns {
                self.slow = false;
                actions.push(Action::SlowEnded {
                    blocked_ns: o.new_max_lag_ns,
                });
            }
        }
        actions
    }

    /// The watcher-clock time at which this loop next needs looking at, given
    /// the latest observation: when its stall would cross a threshold, or the
    /// next snapshot is due.
    pub fn next_deadline(&self, o: &Observation) -> Option<u64> {
        if let Some(ep) = &self.episode {
            let taken = self.cfg.dumps - ep.dumps_due;
            return (ep.dumps_due > 0 && !o.stopped)
                .then(|| ep.started_ns + u64::from(taken) * self.cfg.gap_ns);
        }
        let mut next = None::<u64>;
        let mut consider = |threshold: u64| {
            if o.stall_ns <= threshold {
                let at = o.now_ns + (threshold - o.stall_ns) + 1;
                next = Some(next.map_or(at, |n| n.min(at)));
            }
        };
        consider(self.cfg.interval_ns);
        if let Some(slow) = self.cfg.slow_ns {
            if !self.slow {
                consider(slow);
            }
        }
        next
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    fn cfg() -> Config {
        Config {
            interval_ns: 250 * MS,
            dumps: 3,
            gap_ns: 1000 * MS,
            slow_ns: Some(50 * MS),
        }
    }

    fn obs(now_ms: u64, stall_ms: u64, ticked: bool) -> Observation {
        Observation {
            now_ns: now_ms * MS,
            stall_ns: stall_ms * MS,
            ticked,
            new_max_lag_ns: if ticked { stall_ms * MS } else { 0 },
            stopped: false,
        }
    }

    #[test]
    fn a_long_hang_gives_one_episode_of_three_dumps_then_recovery() {
        let mut t = Tracker::new(Config {
            slow_ns: None,
            ..cfg()
        });
        assert!(t.observe(obs(0, 0, true)).is_empty());
        assert!(t.observe(obs(200, 200, false)).is_empty());
        assert_eq!(
            t.observe(obs(251, 251, false)),
            [
                Action::HangStarted { stall_ns: 251 * MS },
                Action::Dump {
                    index: 0,
                    stall_ns: 251 * MS
                }
            ]
        );
        assert!(t.observe(obs(900, 900, false)).is_empty());
        assert_eq!(
            t.observe(obs(1251, 1251, false)),
            [Action::Dump {
                index: 1,
                stall_ns: 1251 * MS
            }]
        );
        // The loop ticks again after 1.5 s blocked: recovery, but the episode
        // still owes its third snapshot.
        let mut o = obs(1520, 0, true);
        o.new_max_lag_ns = 1500 * MS;
        assert_eq!(t.observe(o), [Action::Recovered { hang_ns: 1500 * MS }]);
        assert!(t.in_episode() && !t.is_hung());
        assert_eq!(
            t.observe(obs(2251, 0, true)),
            [Action::Dump {
                index: 2,
                stall_ns: 0
            }]
        );
        assert!(!t.in_episode());
        // Healthy again: nothing more.
        for ms in (2300..6000).step_by(20) {
            assert!(t.observe(obs(ms, 5, true)).is_empty());
        }
    }

    #[test]
    fn no_second_episode_while_the_hang_lasts() {
        let mut t = Tracker::new(Config {
            slow_ns: None,
            ..cfg()
        });
        t.observe(obs(300, 300, false));
        let mut dumps = 0;
        for ms in (300..10_000).step_by(10) {
            dumps += t
                .observe(obs(ms, ms, false))
                .iter()
                .filter(|a| matches!(a, Action::Dump { .. }))
                .count();
        }
        assert_eq!(dumps, 2, "the first dump came with HangStarted; 3 in all");
        assert!(t.is_hung());
        assert!(t.next_deadline(&obs(10_000, 10_000, false)).is_none());
    }

    #[test]
    fn a_process_stopped_mid_episode_takes_no_snapshot_until_it_runs() {
        let mut t = Tracker::new(cfg());
        let mut o = obs(0, 300 * MS, false);
        assert!(t
            .observe(o)
            .iter()
            .any(|a| matches!(a, Action::Dump { index: 0, .. })));
        o.now_ns = 1500 * MS;
        o.stall_ns = 1800 * MS;
        o.stopped = true;
        assert!(t.observe(o).is_empty());
        assert_eq!(t.next_deadline(&o), None);
        o.stopped = false;
        o.now_ns = 1600 * MS;
        assert!(t
            .observe(o)
            .iter()
            .any(|a| matches!(a, Action::Dump { index: 1, .. })));
    }

    #[test]
    fn a_stopped_process_starts_no_episode() {
        let mut t = Tracker::new(cfg());
        let mut o = obs(5000, 5000, false);
        o.stopped = true;
        assert!(t.observe(o).is_empty());
        assert!(!t.in_episode());
    }

    #[test]
    fn slow_ticks_are_reported_when_they_end_and_dropped_if_they_become_hangs() {
        let mut t = Tracker::new(cfg());
        assert_eq!(t.observe(obs(60, 60, false)), [Action::SlowStarted]);
        assert!(t.observe(obs(65, 65, false)).is_empty());
        let mut end = obs(80, 0, true);
        end.new_max_lag_ns = 69 * MS;
        assert_eq!(
            t.observe(end),
            [Action::SlowEnded {
                blocked_ns: 69 * MS
            }]
        );

        assert_eq!(t.observe(obs(160, 60, false)), [Action::SlowStarted]);
        assert_eq!(
            t.observe(obs(400, 300, false)),
            [
                Action::SlowAbandoned,
                Action::HangStarted { stall_ns: 300 * MS },
                Action::Dump {
                    index: 0,
                    stall_ns: 300 * MS
                }
            ]
        );
    }

    #[test]
    fn deadlines_point_at_the_next_crossing_or_dump() {
        let t = Tracker::new(cfg());
        // Stall 10 ms: the slow threshold (50 ms) is crossed 40 ms from now.
        assert_eq!(t.next_deadline(&obs(1000, 10, false)), Some(1040 * MS + 1));
        let t = Tracker::new(Config {
            slow_ns: None,
            ..cfg()
        });
        assert_eq!(t.next_deadline(&obs(1000, 10, false)), Some(1240 * MS + 1));
        let mut t = Tracker::new(cfg());
        t.observe(obs(300, 300, false));
        assert_eq!(t.next_deadline(&obs(300, 300, false)), Some(1300 * MS));
    }

    #[test]
    fn zero_dumps_still_tracks_hangs() {
        let mut t = Tracker::new(Config {
            dumps: 0,
            slow_ns: None,
            ..cfg()
        });
        assert_eq!(
            t.observe(obs(300, 300, false)),
            [Action::HangStarted { stall_ns: 300 * MS }]
        );
        let mut o = obs(900, 0, true);
        o.new_max_lag_ns = 800 * MS;
        assert_eq!(t.observe(o), [Action::Recovered { hang_ns: 800 * MS }]);
        assert!(!t.in_episode());
    }
}
