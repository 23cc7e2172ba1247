//! The C ABI of the aiodebug heartbeat: `libaiodebug.so` and `libaiodebug.a`,
//! declared in `include/aiodebug.h`.
//!
//! Every function is a thin, panic-free wrapper over the Rust crate
//! `aiodebug`: a C, C++ or Python event loop registers itself, ticks, marks
//! the callbacks it runs, and `aiodebug-watch` reads it from outside exactly
//! like a Rust service. The registry's memory layout is the versioned ABI
//! documented in `src/aiodebug/src/abi.rs`.
//!
//! All unsafe code of this crate is in this file: dereferencing the pointers
//! C passes in. Null pointers are accepted everywhere (a null handle is inert,
//! a null name is empty); names that are not UTF-8 are cut at the first
//! invalid byte (poll markers) or have it replaced (loop names). No function
//! unwinds into C: a panic (there is none to expect) is caught and turned
//! into the inert result.

#![warn(missing_docs)]

use core::ffi::{c_char, c_int, CStr};
use core::time::Duration;
use hb::polling::{self, Label, PollKind};
use hb::Heartbeat;
use std::panic::{catch_unwind, AssertUnwindSafe};

/// An opaque handle for C: a boxed [`Heartbeat`].
#[derive(Debug)]
pub struct AiodebugHeartbeat(Heartbeat);

/// Runs `f`, turning a panic into `default` (never unwinds across the ABI).
fn guarded<T>(default: T, f: impl FnOnce() -> T) -> T {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or(default)
}

/// The bytes of a C string, or empty for NULL.
///
/// # Safety
/// `s` is NULL or points to a NUL-terminated string that stays valid and
/// unmodified for `'a`.
unsafe fn bytes<'a>(s: *const c_char) -> &'a [u8] {
    if s.is_null() {
        return &[];
    }
    // SAFETY: non-null, and the caller guarantees a valid NUL-terminated
    // string living for 'a.
    unsafe { CStr::from_ptr(s) }.to_bytes()
}

/// The longest valid UTF-8 prefix (no allocation).
fn utf8_prefix(b: &[u8]) -> &str {
    match core::str::from_utf8(b) {
        Ok(s) => s,
        Err(e) => core::str::from_utf8(b.get(..e.valid_up_to()).unwrap_or_default()).unwrap_or(""),
    }
}

/// Registers a loop; see `aiodebug_register` in aiodebug.h.
///
/// # Safety
/// `name` is NULL or a valid NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn aiodebug_register(
    name: *const c_char,
    period_ns: u64,
) -> *mut AiodebugHeartbeat {
    // SAFETY: the caller passes NULL or a valid C string, read right here.
    let raw = unsafe { bytes(name) };
    guarded(core::ptr::null_mut(), || {
        let name = String::from_utf8_lossy(raw);
        let h = Heartbeat::with_period(&name, Duration::from_nanos(period_ns));
        Box::into_raw(Box::new(AiodebugHeartbeat(h)))
    })
}

/// The handle behind a pointer, if not NULL.
///
/// # Safety
/// `hb` is NULL or a pointer returned by [`aiodebug_register`] and not yet
/// passed to [`aiodebug_unregister`], not used by another thread meanwhile.
unsafe fn handle<'a>(hb: *const AiodebugHeartbeat) -> Option<&'a Heartbeat> {
    // SAFETY: per the contract above, a non-null `hb` points to a live box.
    unsafe { hb.as_ref() }.map(|h| &h.0)
}

/// Records one iteration; see aiodebug.h.
///
/// # Safety
/// `hb` is NULL or a live handle of [`aiodebug_register`], used by one thread at a time.
#[no_mangle]
pub unsafe extern "C" fn aiodebug_tick(hb: *mut AiodebugHeartbeat) {
    // SAFETY: forwarded contract.
    if let Some(h) = unsafe { handle(hb) } {
        guarded((), || h.tick());
    }
}

/// Records one iteration with a measured lag; see aiodebug.h.
///
/// # Safety
/// As [`aiodebug_tick`].
#[no_mangle]
pub unsafe extern "C" fn aiodebug_tick_with_lag(hb: *mut AiodebugHeartbeat, lag_ns: u64) {
    // SAFETY: forwarded contract.
    if let Some(h) = unsafe { handle(hb) } {
        guarded((), || h.tick_with_lag(Duration::from_nanos(lag_ns)));
    }
}

/// 1 if the handle got a slot, 0 if inert or NULL.
///
/// # Safety
/// As [`aiodebug_tick`].
#[no_mangle]
pub unsafe extern "C" fn aiodebug_is_registered(hb: *const AiodebugHeartbeat) -> c_int {
    // SAFETY: forwarded contract.
    match unsafe { handle(hb) } {
        Some(h) => c_int::from(h.is_registered()),
        None => 0,
    }
}

/// Frees the slot and the handle; NULL is ignored.
///
/// # Safety
/// `hb` is NULL or a live handle of [`aiodebug_register`]; it must not be
/// used again afterwards.
#[no_mangle]
pub unsafe extern "C" fn aiodebug_unregister(hb: *mut AiodebugHeartbeat) {
    if hb.is_null() {
        return;
    }
    // SAFETY: a live pointer from Box::into_raw in aiodebug_register, given
    // back exactly once per the contract.
    let boxed = unsafe { Box::from_raw(hb) };
    guarded((), move || drop(boxed));
}

/// Registrations refused because the registry was full.
#[no_mangle]
pub extern "C" fn aiodebug_refused_registrations() -> u64 {
    guarded(0, hb::refused_registrations)
}

/// Marks the start of a callback or task poll on this thread; see aiodebug.h.
///
/// # Safety
/// `task` and `file` are NULL or valid NUL-terminated strings.
#[no_mangle]
pub unsafe extern "C" fn aiodebug_poll_begin(task: *const c_char, file: *const c_char, line: u32) {
    // SAFETY: the caller passes NULL or valid C strings, read right here.
    let (task, file) = unsafe { (bytes(task), bytes(file)) };
    guarded((), || {
        let label = Label::with_kind(
            utf8_prefix(task),
            utf8_prefix(file),
            line,
            PollKind::Foreign,
        );
        polling::begin(&label, 0);
    });
}

/// Marks the end of the innermost poll begun on this thread; returns its
/// duration in ns (0 without a matching begin).
#[no_mangle]
pub extern "C" fn aiodebug_poll_end() -> u64 {
    guarded(0, || {
        polling::end()
            .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
            .unwrap_or(0)
    })
}

/// Lists this thread's polls under the loop of `hb`; see aiodebug.h.
///
/// # Safety
/// As [`aiodebug_tick`].
#[no_mangle]
pub unsafe extern "C" fn aiodebug_set_thread_loop(hb: *const AiodebugHeartbeat) {
    // SAFETY: forwarded contract.
    if let Some(h) = unsafe { handle(hb) } {
        guarded((), || polling::set_thread_loop(h));
    }
}

/// `(ABI_MAJOR << 16) | ABI_MINOR` of the registry this library writes.
#[no_mangle]
pub extern "C" fn aiodebug_abi_version() -> u32 {
    (u32::from(hb::abi::ABI_MAJOR) << 16) | u32::from(hb::abi::ABI_MINOR)
}

static VERSION: &CStr =
    match CStr::from_bytes_with_nul(concat!(env!("CARGO_PKG_VERSION"), "\0").as_bytes()) {
        Ok(v) => v,
        Err(_) => c"",
    };

/// The library's version, a static NUL-terminated string.
#[no_mangle]
pub extern "C" fn aiodebug_version() -> *const c_char {
    VERSION.as_ptr()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn null_and_invalid_inputs_are_harmless() {
        // SAFETY: NULL is allowed everywhere.
        unsafe {
            aiodebug_tick(core::ptr::null_mut());
            aiodebug_tick_with_lag(core::ptr::null_mut(), 5);
            aiodebug_unregister(core::ptr::null_mut());
            aiodebug_set_thread_loop(core::ptr::null());
            assert_eq!(aiodebug_is_registered(core::ptr::null()), 0);
            aiodebug_poll_begin(core::ptr::null(), core::ptr::null(), 0);
        }
        assert!(aiodebug_poll_end() < 60_000_000_000);
        assert_eq!(aiodebug_poll_end(), 0, "no begin left to end");
        let bad = c"caf\xc3(x";
        // SAFETY: valid C strings (the bytes are not UTF-8, which is allowed).
        let h = unsafe { aiodebug_register(bad.as_ptr(), 1_000_000) };
        assert!(!h.is_null());
        // SAFETY: `h` is live until unregistered below.
        unsafe {
            assert_eq!(aiodebug_is_registered(h), 1);
            aiodebug_tick(h);
            aiodebug_tick_with_lag(h, 12);
            aiodebug_set_thread_loop(h);
            aiodebug_poll_begin(bad.as_ptr(), c"loop.c".as_ptr(), 7);
        }
        assert!(aiodebug_poll_end() < 60_000_000_000);
        // SAFETY: given back once.
        unsafe { aiodebug_unregister(h) };
        assert_eq!(utf8_prefix(b"caf\xc3(x"), "caf");
    }

    /// Every function of include/aiodebug.h is exported here and the other way
    /// round, and the header's ABI version is the crate's.
    #[test]
    fn header_and_exports_agree() {
        let header = include_str!("../include/aiodebug.h");
        let source = include_str!("lib.rs");
        let declared: Vec<&str> = header
            .lines()
            .filter(|l| !l.starts_with(' ') && !l.starts_with('#') && l.ends_with(");"))
            .filter_map(|l| l.split('(').next()?.rsplit([' ', '*']).next())
            .collect();
        let exported: Vec<&str> = source
            .split(concat!("#[no_", "mangle]")) // not this line itself
            .skip(1)
            .filter_map(|item| item.split("fn ").nth(1)?.split('(').next())
            .collect();
        assert_eq!(declared.len(), 11, "{declared:?}");
        let mut a = declared.clone();
        let mut b = exported.clone();
        a.sort_unstable();
        b.sort_unstable();
        assert_eq!(a, b);
        let minor = format!("#define AIODEBUG_ABI_MINOR {}\n", hb::abi::ABI_MINOR);
        let major = format!("#define AIODEBUG_ABI_MAJOR {}\n", hb::abi::ABI_MAJOR);
        assert!(header.contains(&minor) && header.contains(&major));
    }

    #[test]
    fn version_and_abi() {
        // The registry's version as abi.rs (the source of truth) declares it,
        // packed major-high: a reader compares the major half alone.
        let (major, minor) = (hb::abi::ABI_MAJOR, hb::abi::ABI_MINOR);
        assert_eq!(aiodebug_abi_version() >> 16, u32::from(major));
        assert_eq!(aiodebug_abi_version() & 0xffff, u32::from(minor));
        // SAFETY: a static NUL-terminated string.
        let v = unsafe { CStr::from_ptr(aiodebug_version()) };
        assert_eq!(v.to_str(), Ok(env!("CARGO_PKG_VERSION")));
    }
}
