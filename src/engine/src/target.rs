//! The glue: open a process, locate its heartbeat registries, read its loops.

use crate::elf::{self, ModuleCache, RegionInTarget};
use crate::heartbeat::{self, Registry, Rejected};
use crate::tidmap::TidMap;
use crate::{memory, proc, Error, Result};
use std::sync::Mutex;

/// Cap on one registry region read out of a target.
pub const MAX_REGION: u64 = 16 * 1024 * 1024;

/// A process whose heartbeat registries have been located.
#[derive(Debug)]
pub struct Target {
    pid: i32,
    regions: Vec<RegionInTarget>,
    problems: Vec<String>,
    clock_offset_ns: i64,
    /// Thread ids of the target's PID namespace to ours (the identity
    /// outside containers). Behind a lock so that `read` keeps `&self`.
    tids: Mutex<TidMap>,
}

/// One read of every registry of a target.
#[derive(Debug, Clone)]
pub struct Reading {
    /// CLOCK_MONOTONIC of the target's time namespace when the read finished.
    pub now_ns: u64,
    /// Validated registries, each with the module it was found in.
    pub registries: Vec<(RegionInTarget, Registry)>,
    /// Would-be registries that were rejected, with the module.
    pub rejected: Vec<(RegionInTarget, Rejected)>,
}

impl Reading {
    /// Every live loop across registries.
    pub fn loops(&self) -> impl Iterator<Item = &heartbeat::Loop> {
        self.registries.iter().flat_map(|(_, r)| r.loops.iter())
    }

    /// Registrations refused by full registries, summed.
    pub fn refused(&self) -> u64 {
        self.registries
            .iter()
            .map(|(_, r)| r.refused)
            .fold(0, u64::saturating_add)
    }
}

impl Target {
    /// Locates the registries of `pid`. Fails with [`Error::NoHeartbeat`] when no
    /// module mapped by the process carries one.
    pub fn open(pid: i32) -> Result<Target> {
        Self::open_with_cache(pid, &mut ModuleCache::default())
    }

    /// Like [`Target::open`], sharing parsed modules across processes.
    pub fn open_with_cache(pid: i32, cache: &mut ModuleCache) -> Result<Target> {
        if pid <= 0 {
            return Err(Error::NoSuchProcess { pid });
        }
        let maps = proc::read_maps(pid)?;
        let (regions, problems) = elf::locate_registries(pid, &maps, cache);
        if regions.is_empty() {
            return Err(Error::NoHeartbeat {
                pid,
                rejected: problems,
            });
        }
        Ok(Target {
            pid,
            regions,
            problems,
            clock_offset_ns: clock_offset_ns(pid),
            tids: Mutex::new(TidMap::build(pid)),
        })
    }

    /// The process id.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Where the registries were found.
    pub fn regions(&self) -> &[RegionInTarget] {
        &self.regions
    }

    /// Problems met while locating (unreadable modules); informational.
    pub fn problems(&self) -> &[String] {
        &self.problems
    }

    /// Whether the target lives in another PID namespace than ours (its
    /// thread ids are mapped through `NSpid:`).
    pub fn in_other_pid_namespace(&self) -> bool {
        !self.tids.lock().map(|m| m.is_identity()).unwrap_or(true)
    }

    /// CLOCK_MONOTONIC now, in the target's time namespace.
    pub fn now_ns(&self) -> u64 {
        let ours = monotonic_ns();
        ours.saturating_add_signed(self.clock_offset_ns)
    }

    /// Reads every registry (two copies each) and decodes it. Thread ids are
    /// mapped to our PID namespace (see [`crate::tidmap`]).
    pub fn read(&self) -> Result<Reading> {
        let mut reading = Reading {
            now_ns: 0,
            registries: Vec::new(),
            rejected: Vec::new(),
        };
        // Rejected would-be registries past the ones kept with reasons.
        let mut more_rejected = 0usize;
        for region in &self.regions {
            let len = region.size.min(MAX_REGION) as usize;
            let first = memory::read(self.pid, region.addr, len)?;
            let second = memory::read(self.pid, region.addr, len)?;
            let mut scan = heartbeat::decode_section(&first, &second);
            if let Ok(mut tids) = self.tids.lock() {
                for reg in &mut scan.registries {
                    tids.map_registry(reg);
                }
            }
            reading
                .registries
                .extend(scan.registries.into_iter().map(|r| (region.clone(), r)));
            more_rejected = more_rejected.saturating_add(scan.rejected_more);
            if reading.rejected.len() < heartbeat::MAX_REJECTED {
                reading
                    .rejected
                    .extend(scan.rejected.into_iter().map(|r| (region.clone(), r)));
            } else {
                more_rejected = more_rejected.saturating_add(scan.rejected.len());
            }
        }
        reading.now_ns = self.now_ns();
        if reading.registries.is_empty() {
            let mut rejected: Vec<String> = reading
                .rejected
                .iter()
                .take(heartbeat::MAX_REJECTED)
                .map(|(m, r)| {
                    format!(
                        "{} at 0x{:x}: {}",
                        m.module.display(),
                        m.addr + r.offset as u64,
                        r.reason
                    )
                })
                .collect();
            let more = more_rejected.saturating_add(
                reading
                    .rejected
                    .len()
                    .saturating_sub(heartbeat::MAX_REJECTED),
            );
            if more > 0 {
                rejected.push(format!("+{more} more"));
            }
            return Err(Error::NoHeartbeat {
                pid: self.pid,
                rejected,
            });
        }
        Ok(reading)
    }
}

/// Our CLOCK_MONOTONIC in ns.
pub fn monotonic_ns() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map(|ts| {
            (ts.tv_sec() as u64)
                .saturating_mul(1_000_000_000)
                .saturating_add(ts.tv_nsec() as u64)
        })
        .unwrap_or(0)
}

/// The target's CLOCK_MONOTONIC minus ours (time namespaces).
fn clock_offset_ns(pid: i32) -> i64 {
    let theirs = proc::read_timens_offsets(pid);
    let ours = proc::read_own_timens_offsets();
    theirs.monotonic_ns.saturating_sub(ours.monotonic_ns)
}
