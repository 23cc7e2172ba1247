//! The only unsafe code of the crate: two libc calls, declared here so the
//! default build needs no dependency.

/// CLOCK_MONOTONIC in nanoseconds (0 if the clock cannot be read).
#[cfg(target_os = "linux")]
pub(crate) fn monotonic_ns() -> u64 {
    #[repr(C)]
    struct Timespec {
        tv_sec: i64,
        tv_nsec: core::ffi::c_long,
    }
    extern "C" {
        fn clock_gettime(clk: i32, ts: *mut Timespec) -> i32;
    }
    const CLOCK_MONOTONIC: i32 = 1;
    let mut ts = Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, exclusively borrowed timespec with the C layout
    // of 64-bit Linux targets; clock_gettime only writes into it.
    let rc = unsafe { clock_gettime(CLOCK_MONOTONIC, &mut ts) };
    if rc != 0 {
        return 0;
    }
    (ts.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(ts.tv_nsec as u64)
}

/// The calling thread's OS thread id, cached per thread.
#[cfg(target_os = "linux")]
pub(crate) fn thread_id() -> u32 {
    use std::cell::Cell;
    extern "C" {
        fn gettid() -> i32;
    }
    thread_local! {
        static TID: Cell<u32> = const { Cell::new(0) };
    }
    TID.try_with(|cached| {
        let tid = cached.get();
        if tid != 0 {
            return tid;
        }
        // SAFETY: gettid takes no arguments, cannot fail and touches no memory.
        let tid = unsafe { gettid() } as u32;
        cached.set(tid);
        tid
    })
    .unwrap_or(0)
}

/// Stand-ins on targets without a registry: time from `Instant`, no thread id.
#[cfg(not(target_os = "linux"))]
pub(crate) fn monotonic_ns() -> u64 {
    use std::sync::OnceLock;
    use std::time::Instant;
    static START: OnceLock<Instant> = OnceLock::new();
    let start = START.get_or_init(Instant::now);
    u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(not(target_os = "linux"))]
pub(crate) fn thread_id() -> u32 {
    0
}
