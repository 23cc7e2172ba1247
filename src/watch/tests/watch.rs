//! `watch` against real fixture processes: hang episodes, files, StatsD
//! packets on a real UDP socket, slow ticks, and the ways a watch can end.

mod support;

use serde_json::Value;
use std::net::UdpSocket;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use support::watcher::{wait_until, Watch};
use support::{watch_bin, Fixture, Variant};

fn tempdir(tag: &str) -> support::TempDir {
    support::TempDir::new(&format!("watch-{tag}"))
}

fn dump_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("read dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("stacktrace-"))
        })
        .collect();
    v.sort();
    v
}

/// Parses `stacktrace-YYYYMMDD-HHMMSS.ffffff-N.txt` into (seconds of day, N).
fn parse_name(p: &Path) -> (f64, u32) {
    let name = p.file_name().expect("name").to_string_lossy().into_owned();
    let rest = name
        .strip_prefix("stacktrace-")
        .and_then(|r| r.strip_suffix(".txt"))
        .unwrap_or_else(|| panic!("bad name {name}"));
    let (date, rest) = rest.split_once('-').expect("date");
    let (time, n) = rest.rsplit_once('-').expect("index");
    assert_eq!(date.len(), 8, "{name}");
    assert!(date.chars().all(|c| c.is_ascii_digit()), "{name}");
    let (hms, micros) = time.split_once('.').expect("fraction");
    assert_eq!((hms.len(), micros.len()), (6, 6), "{name}");
    let h: f64 = hms[0..2].parse().expect("h");
    let m: f64 = hms[2..4].parse().expect("m");
    let s: f64 = hms[4..6].parse().expect("s");
    let us: f64 = micros.parse().expect("us");
    (h * 3600.0 + m * 60.0 + s + us / 1e6, n.parse().expect("N"))
}

/// The tick count of loop `name` in the fixture's own registry (read by the
/// tests' naive reader, not by the code under test).
fn ticks(fx: &Fixture, name: &str) -> u64 {
    fx.ticks_of(&fx.path, name)
        .unwrap_or_else(|| panic!("no loop {name:?} in the registry of {}", fx.pid))
}

/// Waits until loop `name` of `fx` ticked past tick `n`: a block that held it
/// at `n` is over.
fn until_ticked_past(fx: &Fixture, name: &str, n: u64) {
    wait_until(
        &format!("loop {name:?} of {} ticking past tick {n}", fx.pid),
        Duration::from_secs(10),
        || (ticks(fx, name) > n).then_some(()),
    );
}

fn state_of(pid: i32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .expect("status")
        .lines()
        .find_map(|l| l.strip_prefix("State:").map(|s| s.trim().to_string()))
        .expect("State")
}

#[test]
fn a_hang_gives_exactly_three_files_a_second_apart_naming_the_blocker() {
    let mut fx = Fixture::spawn("fx-tokio-current", Variant::Pie, &[]);
    let dir = tempdir("three");
    let mut w = Watch::started(fx.pid, &dir, &[]);
    fx.ok("block main 1500");
    let hang = w.wait_for("hang_started", Duration::from_secs(5));
    assert_eq!(hang["loop"], "main");
    for _ in 0..3 {
        w.wait_for("dump_written", Duration::from_secs(5));
    }
    // The loop recovers at 1.5 s, between the second and third snapshots.
    let rec = w.first("recovered", Duration::from_secs(5));
    let hang_ms = rec["hang_ms"].as_f64().expect("hang_ms");
    assert!((1300.0..2500.0).contains(&hang_ms), "hang of {hang_ms} ms");
    // Healthy for two more seconds: nothing more is written (a fixed time:
    // that nothing happens in it is what is tested; its events are read).
    w.collect_for(Duration::from_secs(2));
    let files = dump_files(&dir);
    assert_eq!(files.len(), 3, "{files:?}");
    let parsed: Vec<(f64, u32)> = files.iter().map(|p| parse_name(p)).collect();
    let mut idx: Vec<u32> = parsed.iter().map(|p| p.1).collect();
    idx.sort();
    assert_eq!(idx, [0, 1, 2]);
    let mut times: Vec<f64> = parsed.iter().map(|p| p.0).collect();
    times.sort_by(f64::total_cmp);
    for gap in times.windows(2).map(|w| w[1] - w[0]) {
        assert!((0.85..1.5).contains(&gap), "files {gap} s apart: {files:?}");
    }
    for f in &files {
        let mode = std::fs::metadata(f).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode, 0o640, "{}", f.display());
    }
    // The first snapshot: header, then the stalled loop's thread, marked, with
    // the blocking function in its frames.
    let first = files.iter().find(|p| parse_name(p).1 == 0).expect("file 0");
    let text = std::fs::read_to_string(first).expect("read");
    assert!(
        text.starts_with("aiodebug-watch hang dump: snapshot 1 of 3"),
        "{text}"
    );
    assert!(text.contains(&format!("pid:        {}", fx.pid)), "{text}");
    assert!(
        text.contains("loop:       'main'") && text.contains("stalled for"),
        "{text}"
    );
    let first_thread = text
        .split("\n\n")
        .find(|b| b.starts_with("Thread "))
        .expect("a thread block");
    assert!(
        first_thread.contains("STALLED LOOP 'main'"),
        "{first_thread}"
    );
    assert!(
        first_thread.contains("fixture_block_loop"),
        "{first_thread}"
    );
    assert!(
        text.contains("blocked in: aiodebug_fixtures::fixture_block_loop"),
        "{text}"
    );
    // Later snapshots show CPU used since the previous one.
    let second = files.iter().find(|p| parse_name(p).1 == 1).expect("file 1");
    let text = std::fs::read_to_string(second).expect("read");
    assert!(text.contains("since the previous snapshot"), "{text}");
    assert_eq!(w.count("hang_started"), 1);
}

#[test]
fn only_the_blocked_loop_has_an_episode() {
    let mut fx = Fixture::spawn("fx-tokio-multi", Variant::Pie, &[]);
    let dir = tempdir("two-loops");
    let mut w = Watch::started(fx.pid, &dir, &["--dumps", "1"]);
    // Two loops, each said in turn: the blocked one must be watched.
    w.loop_found("background", Duration::from_secs(10));
    fx.ok("block background 1000");
    let hang = w.wait_for("hang_started", Duration::from_secs(5));
    assert_eq!(hang["loop"], "background");
    w.first("dump_written", Duration::from_secs(5));
    w.first("recovered", Duration::from_secs(5));
    // Half a second more of both loops ticking: no second episode (a fixed
    // time: that nothing happens in it is what is tested).
    w.collect_for(Duration::from_millis(500));
    let _ = w.child.kill();
    let (_, seen) = w.finish(Duration::from_secs(5));
    let hung: Vec<&Value> = seen
        .iter()
        .filter(|v| v["event"] == "hang_started")
        .collect();
    assert_eq!(hung.len(), 1, "{seen:#?}");
    assert_eq!(dump_files(&dir).len(), 1);
}

#[test]
fn statsd_gets_lags_stall_gauges_and_counters_on_a_real_socket() {
    let listener = UdpSocket::bind("127.0.0.1:0").expect("bind");
    listener
        .set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    let addr = listener.local_addr().expect("addr").to_string();
    let mut fx = Fixture::spawn("fx-tokio-current", Variant::Pie, &[]);
    let dir = tempdir("statsd");
    let mut w = Watch::started(
        fx.pid,
        &dir,
        &[
            "--statsd", &addr, "--tag", "env:test", "--prefix", "svc", "--dumps", "2",
        ],
    );
    // A dozen healthy ticks after the watch's first read: each one's lag is
    // sent as a timing.
    until_ticked_past(&fx, "main", ticks(&fx, "main") + 11);
    fx.ok("block main 1200");
    w.wait_for("recovered", Duration::from_secs(5));
    while w.count("dump_written") < 2 {
        w.wait_for("dump_written", Duration::from_secs(5));
    }
    // SIGTERM: the watch drains the queue and exits 0.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(w.child.id() as i32),
        nix::sys::signal::SIGTERM,
    )
    .expect("SIGTERM");
    let (code, _) = w.finish(Duration::from_secs(10));
    assert_eq!(code, Some(0));
    let mut packets = String::new();
    let mut buf = [0u8; 65536];
    while let Ok(n) = listener.recv(&mut buf) {
        packets.push_str(&String::from_utf8_lossy(&buf[..n]));
        packets.push('\n');
    }
    let lines: Vec<&str> = packets.lines().collect();
    let lag = lines
        .iter()
        .filter(|l| l.starts_with("svc.monitor_loop_lag:") && l.contains("|ms|#"))
        .collect::<Vec<_>>();
    assert!(lag.len() > 10, "{packets}");
    assert!(
        lag.iter()
            .all(|l| l.contains("loop:main") && l.contains("env:test")),
        "{packets}"
    );
    // The blocked tick's lag (~1200 ms) went out as a timing.
    assert!(
        lag.iter().any(|l| l
            .split(':')
            .nth(1)
            .and_then(|v| v.split('|').next())
            .and_then(|v| v.parse::<u64>().ok())
            .is_some_and(|ms| ms > 1000)),
        "{packets}"
    );
    let gauges: Vec<f64> = lines
        .iter()
        .filter_map(|l| l.strip_prefix("svc.loop_stall:"))
        .filter_map(|v| v.split('|').next()?.parse().ok())
        .collect();
    assert!(
        gauges.iter().filter(|&&g| g > 250.0).count() >= 3,
        "stall gauges during the hang: {gauges:?}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("svc.hangs:1|c") && l.contains("loop:main")),
        "{packets}"
    );
    assert_eq!(
        lines
            .iter()
            .filter(|l| l.starts_with("svc.dumps:1|c"))
            .count(),
        2,
        "{packets}"
    );
}

#[test]
fn no_statsd_listener_and_an_unresolvable_host_do_not_stop_the_watch() {
    let port = UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .expect("port")
        .port();
    let mut fx = Fixture::spawn("fx-thread-loop", Variant::Pie, &[]);
    for target in [
        format!("127.0.0.1:{port}"),
        "no-such-host.invalid:8125".to_string(),
    ] {
        let dir = tempdir("nostatsd");
        let w = Watch::started(
            fx.pid,
            &dir,
            &["--statsd", &target, "--dumps", "1", "--exit-on-hang"],
        );
        fx.ok("block ticker 600");
        let (code, seen) = w.finish(Duration::from_secs(10));
        // With one dump the watch exits while the loop may still be blocked:
        // the next watch starts once it ticks again, so that its hang is
        // the next block's, not the rest of this one.
        until_ticked_past(&fx, "ticker", ticks(&fx, "ticker"));
        assert_eq!(code, Some(1), "--exit-on-hang: {seen:#?}");
        assert!(
            seen.iter().any(|v| v["event"] == "dump_written"),
            "{seen:#?}"
        );
        if target.contains("invalid") {
            assert!(
                seen.iter().any(|v| v["event"] == "warning"
                    && v["message"].as_str().is_some_and(|m| m.contains("StatsD"))),
                "{seen:#?}"
            );
        }
    }
}

#[test]
fn exit_on_hang_waits_for_the_episode_files() {
    let mut fx = Fixture::spawn("fx-thread-loop", Variant::NoPieStripped, &[]);
    let dir = tempdir("exit-on-hang");
    let w = Watch::started(fx.pid, &dir, &["--exit-on-hang", "--dump-gap", "0.3"]);
    fx.ok("block ticker 2000");
    let start = Instant::now();
    let (code, seen) = w.finish(Duration::from_secs(10));
    assert_eq!(code, Some(1), "{seen:#?}");
    assert_eq!(dump_files(&dir).len(), 3);
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "exited after the files, not after the hang"
    );
    // A stripped non-PIE binary still names its threads' frames by module.
    let text = std::fs::read_to_string(&dump_files(&dir)[0]).expect("read");
    assert!(text.contains("[fx-thread-loop]"), "{text}");
}

#[test]
fn slow_ticks_are_warned_with_the_blocking_frame() {
    let mut fx = Fixture::spawn("fx-tokio-current", Variant::Pie, &[]);
    let dir = tempdir("slow");
    let mut w = Watch::started(fx.pid, &dir, &["--slow", "0.05"]);
    fx.ok("block main 150");
    let slow = w.wait_for("slow_tick", Duration::from_secs(5));
    assert_eq!(slow["loop"], "main");
    let ms = slow["blocked_ms"].as_f64().expect("blocked_ms");
    assert!((100.0..250.0).contains(&ms), "{slow}");
    let frames = slow["frames"].as_str().expect("frames");
    assert!(
        frames.starts_with("aiodebug_fixtures::fixture_block_loop ("),
        "{frames}"
    );
    assert_eq!(w.count("hang_started"), 0);
    assert!(dump_files(&dir).is_empty());
}

#[test]
fn a_watcher_killed_mid_episode_leaves_the_target_running() {
    let mut fx = Fixture::spawn("fx-tokio-current", Variant::Pie, &[]);
    fx.ok("threads 16");
    for delay_ms in [0u64, 30, 120, 400, 1100] {
        let dir = tempdir("kill");
        let mut w = Watch::started(fx.pid, &dir, &["--dump-gap", "0.2"]);
        fx.ok("block main 1500");
        w.wait_for("hang_started", Duration::from_secs(5));
        // The loop is blocked now: its tick count stays until the block ends.
        let held_at = ticks(&fx, "main");
        // The delay is the test: a kill at each moment of an episode.
        std::thread::sleep(Duration::from_millis(delay_ms));
        w.child.kill().expect("SIGKILL watcher");
        let _ = w.child.wait();
        // Reaped: the kernel has detached every thread it held. Not
        // stopped, within a second at most of being scheduled again.
        let end = Instant::now() + Duration::from_secs(1);
        let st = loop {
            let st = state_of(fx.pid);
            if !(st.starts_with('T') || st.starts_with('t')) || Instant::now() >= end {
                break st;
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        assert!(
            !st.starts_with('T') && !st.starts_with('t'),
            "left in state {st}"
        );
        // The block ends and the loop ticks again.
        until_ticked_past(&fx, "main", held_at);
        assert_eq!(
            fx.send("ping"),
            "OK pong",
            "target answers after a kill at {delay_ms} ms"
        );
        let tracer = std::fs::read_to_string(format!("/proc/{}/status", fx.pid)).expect("status");
        assert!(tracer.contains("TracerPid:\t0"), "still traced: {tracer}");
    }
}

#[test]
fn a_stopped_target_gives_no_dumps() {
    let fx = Fixture::spawn("fx-thread-loop", Variant::Pie, &[]);
    let dir = tempdir("stopped");
    let mut w = Watch::started(fx.pid, &dir, &[]);
    let pid = nix::unistd::Pid::from_raw(fx.pid);
    nix::sys::signal::kill(pid, nix::sys::signal::SIGSTOP).expect("SIGSTOP");
    w.wait_for("process_stopped", Duration::from_secs(5));
    // A second and a half stopped (a fixed time: that no episode starts in
    // it is what is tested; its events are read).
    w.collect_for(Duration::from_millis(1500));
    assert_eq!(w.count("hang_started"), 0, "{:#?}", w.seen);
    assert!(dump_files(&dir).is_empty());
    assert!(state_of(fx.pid).starts_with('T'), "still stopped");
    nix::sys::signal::kill(pid, nix::sys::signal::SIGCONT).expect("SIGCONT");
    w.wait_for("process_continued", Duration::from_secs(5));
}

#[test]
fn the_target_exiting_ends_the_watch_with_5() {
    let fx = Fixture::spawn("fx-thread-loop", Variant::Pie, &[]);
    let dir = tempdir("exits");
    let w = Watch::started(fx.pid, &dir, &[]);
    drop(fx);
    let (code, seen) = w.finish(Duration::from_secs(5));
    assert_eq!(code, Some(5), "{seen:#?}");
    assert!(
        seen.iter().any(|v| v["event"] == "target_gone"),
        "{seen:#?}"
    );
}

#[test]
fn an_unwritable_output_directory_is_refused_at_start() {
    let fx = Fixture::spawn("fx-thread-loop", Variant::Pie, &[]);
    let dir = tempdir("unwritable");
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    // As an unprivileged user the root-owned directory is not writable; the
    // check comes before anything touches the target.
    let out = Command::new(watch_bin())
        .args(["watch", &fx.pid.to_string(), "--output-dir"])
        .arg(&dir)
        .uid(65534)
        .gid(65534)
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(6));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("not writable") && err.contains(&*dir.to_string_lossy()),
        "{err}"
    );
    // A path under a regular file cannot be a directory at all.
    let out = Command::new(watch_bin())
        .args([
            "watch",
            &fx.pid.to_string(),
            "--output-dir",
            "/proc/version/dumps",
        ])
        .output()
        .expect("run");
    assert_eq!(
        out.status.code(),
        Some(6),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_full_disk_is_a_warning_and_the_budget_deletes_nothing() {
    let dir = tempdir("full");
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=64k", "tmpfs"])
        .arg(&dir)
        .status()
        .is_ok_and(|s| s.success());
    assert!(mounted, "this test mounts a 64 KiB tmpfs (needs root)");
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(&self.0).status();
        }
    }
    let _guard = Unmount(dir.clone());
    // Fill the file system but a few KiB.
    std::fs::write(dir.join("filler"), vec![0u8; 60 * 1024]).expect("fill");
    let mut fx = Fixture::spawn("fx-tokio-current", Variant::Pie, &[]);
    let w = Watch::started(fx.pid, &dir, &["--dump-gap", "0.2", "--exit-on-hang"]);
    fx.ok("block main 1000");
    let (code, seen) = w.finish(Duration::from_secs(10));
    assert_eq!(code, Some(1), "{seen:#?}");
    let warnings: Vec<&Value> = seen.iter().filter(|v| v["event"] == "warning").collect();
    assert!(
        warnings.iter().any(|v| v["message"]
            .as_str()
            .is_some_and(|m| m.contains("No space left"))),
        "{seen:#?}"
    );
    // No partial or temporary files left behind.
    let names: Vec<String> = std::fs::read_dir(&dir)
        .expect("dir")
        .map(|e| e.expect("e").file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        names
            .iter()
            .all(|n| n == "filler" || (n.starts_with("stacktrace-") && !n.ends_with(".tmp"))),
        "{names:?}"
    );

    // The first watch exited after its files, the loop maybe still blocked:
    // the second one watches the next block.
    until_ticked_past(&fx, "main", ticks(&fx, "main"));

    // Budget: 1 KiB allowed (the smallest), so every dump is skipped with one warning.
    let dir2 = tempdir("budget");
    let w = Watch::started(
        fx.pid,
        &dir2,
        &[
            "--max-dump-bytes",
            "1024",
            "--dump-gap",
            "0.2",
            "--exit-on-hang",
        ],
    );
    fx.ok("block main 1000");
    let (code, seen) = w.finish(Duration::from_secs(10));
    assert_eq!(code, Some(1));
    assert_eq!(
        seen.iter()
            .filter(|v| v["event"] == "warning" && v["message"] == "dump budget spent")
            .count(),
        1,
        "{seen:#?}"
    );
    assert!(dump_files(&dir2).is_empty());
}
