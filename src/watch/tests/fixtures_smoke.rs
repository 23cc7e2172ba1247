//! The fixture programs themselves work: every one starts, announces READY,
//! answers the protocol, grows threads on demand, and its heartbeat registry
//! (read naively through /proc/PID/mem) shows loops ticking and stalling when
//! told to block.

mod support;

use std::path::Path;
use std::time::{Duration, Instant};
use support::{Fixture, Variant};

const BLOCK_MS: u64 = 1500;

/// Polls until `f` holds or `secs` pass.
fn eventually(secs: u64, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `threads 3` adds three threads; `ping` answers; an unknown loop is refused.
fn check_protocol(fx: &mut Fixture) {
    assert_eq!(fx.send("ping"), "OK pong");
    assert!(
        fx.send("block no-such-loop 10").starts_with("ERR"),
        "unknown loop must be refused"
    );
    assert!(fx.send("frobnicate").starts_with("ERR"));
    let before = fx.threads();
    let answer = fx.ok("threads 3");
    assert_eq!(answer, "OK threads=3");
    let after = fx.threads();
    assert_eq!(
        after,
        before + 3,
        "threads 3 should add 3 threads ({before} -> {after})"
    );
    fx.ok("spin 20");
}

/// `block <name>` answers at once (the command thread is not the blocked
/// one) and, when the loop has a heartbeat in `elf`, its ticks stop for the
/// block's duration and then resume.
fn check_block(fx: &mut Fixture, elf: Option<&Path>, name: &str, keeps_ticking: &[&str]) {
    let ticks = |fx: &Fixture, n: &str| elf.and_then(|e| fx.ticks_of(e, n));
    if elf.is_some() {
        eventually(10, &format!("{name} to tick"), || {
            ticks(fx, name).is_some_and(|t| t > 0)
        });
    }
    let others_before: Vec<Option<u64>> = keeps_ticking.iter().map(|o| ticks(fx, o)).collect();
    let sent = Instant::now();
    assert_eq!(fx.send(&format!("block {name} {BLOCK_MS}")), "OK");
    // The command thread is free while the loop is blocked.
    assert_eq!(fx.send("ping"), "OK pong");
    assert!(
        sent.elapsed() < Duration::from_millis(BLOCK_MS / 2),
        "answers should not wait for the block"
    );
    if elf.is_none() {
        // No heartbeat to check: just let the block run out.
        std::thread::sleep(Duration::from_millis(BLOCK_MS + 100));
        return;
    }
    std::thread::sleep(Duration::from_millis(300));
    let t1 = ticks(fx, name).expect("slot still registered");
    std::thread::sleep(Duration::from_millis(600));
    let t2 = ticks(fx, name).expect("slot still registered");
    if sent.elapsed() < Duration::from_millis(BLOCK_MS) {
        assert_eq!(t1, t2, "{name} should not tick while blocked");
        for (o, before) in keeps_ticking.iter().zip(&others_before) {
            let now = ticks(fx, o);
            assert!(
                now > *before,
                "{o} should keep ticking while {name} is blocked ({before:?} -> {now:?})"
            );
        }
    } else {
        eprintln!("machine too slow to sample inside the block; skipping the stall check");
    }
    eventually(10, &format!("{name} to tick again"), || {
        ticks(fx, name).is_some_and(|t| t > t2)
    });
}

fn file_contains(path: &Path, needle: &[u8]) -> bool {
    let bytes = std::fs::read(path).expect("read fixture");
    bytes.windows(needle.len()).any(|w| w == needle)
}

/// Build-variant facts: PIE or not, symbols or not, section present.
fn check_variant(path: &Path, v: Variant, has_registry: bool) {
    let ty = support::elf_type(path);
    let want = if v.is_pie() {
        support::ET_DYN
    } else {
        support::ET_EXEC
    };
    assert_eq!(ty, want, "{} e_type for {v:?}", path.display());
    assert_eq!(
        file_contains(path, b"aiodebug_registry_0_1"),
        has_registry && v.has_symbols(),
        "{} symbol name presence for {v:?}",
        path.display()
    );
    assert_eq!(
        support::hb_section(path).is_some(),
        has_registry,
        "{} aiodebug_hb section presence",
        path.display()
    );
}

#[test]
fn thread_loop_every_variant() {
    for v in Variant::ALL {
        let path = support::fixture_path("fx-thread-loop", v);
        check_variant(&path, v, true);
        let mut fx = Fixture::spawn("fx-thread-loop", v, &[]);
        assert_eq!(fx.kind(), "thread-loop");
        assert_eq!(fx.loops(), ["ticker"]);
        let slots = fx.hb_slots_of(&path);
        let ticker = slots
            .iter()
            .find(|s| s.name == "ticker")
            .unwrap_or_else(|| panic!("{v:?}: no ticker slot in {slots:?}"));
        assert_eq!(ticker.period_ns, 10_000_000);
        assert!(
            support::proc_tasks(fx.pid)
                .iter()
                .any(|(tid, name)| *tid as u32 == ticker.tid && name == "ticker"),
            "the slot's tid is the ticker thread"
        );
        check_protocol(&mut fx);
        check_block(&mut fx, Some(&path), "ticker", &[]);
        assert!(fx.exit().success());
    }
}

#[test]
fn tokio_current_every_variant() {
    for v in Variant::ALL {
        let path = support::fixture_path("fx-tokio-current", v);
        check_variant(&path, v, true);
        let mut fx = Fixture::spawn("fx-tokio-current", v, &[]);
        assert_eq!(fx.kind(), "tokio-current");
        assert_eq!(fx.loops(), ["main"]);
        check_protocol(&mut fx);
        check_block(&mut fx, Some(&path), "main", &[]);
        // The runtime is the main thread: the slot's tid is the pid.
        let main = fx
            .hb_slots_of(&path)
            .into_iter()
            .find(|s| s.name == "main")
            .expect("main slot");
        assert_eq!(main.tid as i32, fx.pid);
    }
}

#[test]
fn tokio_multi_blocks_one_runtime_at_a_time() {
    let path = support::fixture_path("fx-tokio-multi", Variant::Pie);
    let mut fx = Fixture::spawn("fx-tokio-multi", Variant::Pie, &[]);
    assert_eq!(fx.kind(), "tokio-multi");
    assert_eq!(fx.loops(), ["workers", "background"]);
    check_protocol(&mut fx);
    check_block(&mut fx, Some(&path), "background", &["workers"]);
    check_block(&mut fx, Some(&path), "workers", &["background"]);
}

#[test]
fn thread_loop_stress_keeps_its_invariants() {
    fn stress_lag(t: u64) -> u64 {
        (t.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 40) + 1
    }
    let path = support::fixture_path("fx-thread-loop", Variant::Pie);
    let mut fx = Fixture::spawn("fx-thread-loop", Variant::Pie, &["--stress", "1"]);
    assert_eq!(fx.kind(), "thread-loop-stress");
    assert_eq!(fx.loops(), ["stress"]);
    let mut stats = String::new();
    eventually(20, "the stress run to end", || {
        stats = fx.ok("stats");
        stats.ends_with("running=0")
    });
    let field = |k: &str| -> u64 {
        stats
            .split_whitespace()
            .find_map(|w| w.strip_prefix(k)?.strip_prefix('='))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {k} in {stats:?}"))
    };
    let (ticks, regs) = (field("stress_ticks"), field("churn_regs"));
    assert!(ticks > 10_000, "stress ticked only {ticks} times");
    assert!(regs > 100, "churn registered only {regs} times");
    // Stopped: the registry is stable, so the naive reader may check it all.
    let slots = fx.hb_slots_of(&path);
    let stress = slots
        .iter()
        .find(|s| s.name == "stress")
        .expect("stress slot");
    assert_eq!(stress.ticks, ticks);
    for (i, &(tag, lag)) in stress.ring.iter().enumerate() {
        assert_eq!(tag % 64, i as u64);
        assert!(tag + 64 > ticks && tag <= ticks, "tag {tag} of {ticks}");
        assert_eq!(lag, stress_lag(tag), "lag of tick {tag}");
    }
    assert!(
        !slots.iter().any(|s| s.name.starts_with("churn-")),
        "the churn thread drops its last registration"
    );
}

#[test]
fn no_heartbeat_has_no_registry() {
    let path = support::fixture_path("fx-no-heartbeat", Variant::Pie);
    check_variant(&path, Variant::Pie, false);
    assert!(!file_contains(&path, b"aiodebug_hb"));
    let mut fx = Fixture::spawn("fx-no-heartbeat", Variant::Pie, &[]);
    assert_eq!(fx.kind(), "no-heartbeat");
    assert!(fx.loops().is_empty());
    // std names a thread from inside it, so READY may come first: wait.
    let named = |pid| {
        support::proc_tasks(pid)
            .iter()
            .any(|(_, n)| n == "main-loop")
    };
    let until = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while !named(fx.pid) && std::time::Instant::now() < until {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    assert!(named(fx.pid), "no thread named main-loop");
    check_protocol(&mut fx);
    check_block(&mut fx, None, "main-loop", &[]);
}

#[test]
fn garbage_headers_hold_no_valid_registry() {
    let path = support::fixture_path("fx-garbage", Variant::Pie);
    let mut fx = Fixture::spawn("fx-garbage", Variant::Pie, &["headers"]);
    assert_eq!(fx.kind(), "garbage-headers");
    assert!(fx.loops().is_empty());
    let section = support::read_hb(fx.pid, &path).expect("the section is readable");
    assert_eq!(section.len(), 64 + 64 * 1152);
    let magic = u64::from_le_bytes(*b"AIODBGHB").to_le_bytes();
    let with_magic = section.chunks(64).filter(|c| c[..8] == magic).count();
    assert!(with_magic >= 10, "only {with_magic} would-be headers");
    assert!(support::hb_slots(&section).is_empty());
    check_protocol(&mut fx);
    check_block(&mut fx, None, "main-loop", &[]);
}

#[test]
fn garbage_slots_are_hostile_but_sane_ticks() {
    let path = support::fixture_path("fx-garbage", Variant::Pie);
    let mut fx = Fixture::spawn("fx-garbage", Variant::Pie, &["slots"]);
    assert_eq!(fx.kind(), "garbage-slots");
    assert_eq!(fx.loops(), ["sane"]);
    let slots = fx.hb_slots_of(&path);
    // 18 hostile or sane slots, minus odd gen, in_use 2 and in_use 0xDEADBEEF.
    assert_eq!(slots.len(), 15, "{slots:#?}");
    assert!(slots.iter().any(|s| s.name.contains('\u{1b}')));
    assert!(slots.iter().any(|s| s.ticks == u64::MAX));
    assert!(slots.iter().any(|s| s.period_ns == u64::MAX));
    check_protocol(&mut fx);
    check_block(&mut fx, Some(&path), "sane", &[]);
}

#[test]
fn dlopen_host_registry_lives_in_the_library() {
    let host = support::fixture_path("fx-dlopen-host", Variant::Pie);
    let lib = support::fixture_lib_path();
    assert!(
        support::hb_section(&host).is_none(),
        "host must not link aiodebug"
    );
    assert!(
        support::hb_section(&lib).is_some(),
        "library has the section"
    );
    assert!(file_contains(&lib, b"aiodebug_registry_0_1"));
    let mut fx = Fixture::spawn("fx-dlopen-host", Variant::Pie, &[]);
    assert_eq!(fx.kind(), "dlopen-host");
    assert_eq!(fx.loops(), ["plugin"]);
    assert!(
        support::load_base(fx.pid, &lib).is_some(),
        "library is mapped"
    );
    check_protocol(&mut fx);
    check_block(&mut fx, Some(&lib), "plugin", &[]);
}

#[test]
fn fixtures_die_with_their_test() {
    // Closing stdin (what a killed test does) ends the fixture.
    for bin in ["fx-no-heartbeat", "fx-tokio-current", "fx-thread-loop"] {
        let fx = Fixture::spawn(bin, Variant::Pie, &[]);
        let status = fx.close_stdin_and_wait(Duration::from_secs(10));
        assert!(
            status.is_some_and(|s| s.success()),
            "{bin} should exit 0 on EOF, got {status:?}"
        );
    }
    // And dropping the handle kills and reaps it.
    let fx = Fixture::spawn("fx-no-heartbeat", Variant::Pie, &[]);
    let pid = fx.pid;
    drop(fx);
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "fixture {pid} outlived its handle"
    );
}
