//! The dilated runtime against real elapsed time: code that only calls
//! `tokio::time` (as a library does) runs on the process-wide dilation.
//!
//! Tolerances (a shared, noisy 2-core machine): a timer never fires before
//! its dilated duration minus one step of virtual time (the driver's tick);
//! "not much later" is an upper bound far below what the undilated, or the
//! wrongly dilated, duration would be. The tests change the process-wide
//! dilation, so they take turns ([`Serial`]).

use aiodebug::testing::{self, Clock};
use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant as RealInstant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

/// Holds the process-wide dilation for one test; back to 1 when dropped,
/// also when the test fails.
struct Serial(#[allow(dead_code)] MutexGuard<'static, ()>);

fn serial(dilation: f64) -> Serial {
    static LOCK: Mutex<()> = Mutex::new(());
    let guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    testing::set_dilation(dilation);
    Serial(guard)
}

impl Drop for Serial {
    fn drop(&mut self) {
        testing::set_dilation(1.0);
    }
}

fn rt() -> tokio::runtime::Runtime {
    testing::dilated_runtime().expect("dilated runtime")
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

/// Library-style code: a sleep, a timeout around a future that never
/// completes, an interval — only `tokio::time`. Returns the real time of
/// each and the runtime's (virtual) time of each.
async fn library_code(
    sleep: Duration,
    limit: Duration,
    period: Duration,
) -> [(Duration, Duration); 3] {
    let mut out = [(Duration::ZERO, Duration::ZERO); 3];
    let (real, virt) = (RealInstant::now(), Instant::now());
    tokio::time::sleep(sleep).await;
    out[0] = (real.elapsed(), virt.elapsed());

    let (real, virt) = (RealInstant::now(), Instant::now());
    let r = tokio::time::timeout(limit, std::future::pending::<()>()).await;
    assert!(r.is_err(), "a pending future completed");
    out[1] = (real.elapsed(), virt.elapsed());

    let (real, virt) = (RealInstant::now(), Instant::now());
    let mut every = tokio::time::interval(period);
    for _ in 0..4 {
        every.tick().await; // the first at once, then 3 periods
    }
    out[2] = (real.elapsed(), virt.elapsed());
    out
}

/// Checks one measurement of [`library_code`]: its real time within `real`
/// (seconds), its virtual time at least `at_least`.
fn check(what: &str, (real, virt): (Duration, Duration), range: (f64, f64), at_least: Duration) {
    assert!(
        (range.0..range.1).contains(&secs(real)),
        "{what} took {real:?} real"
    );
    assert!(virt >= at_least, "{what} took {virt:?} virtual");
}

#[test]
fn library_timers_run_three_times_as_fast() {
    let _s = serial(3.0);
    let [sleep, timeout, interval] = rt().block_on(library_code(
        Duration::from_secs(1),
        Duration::from_millis(600),
        Duration::from_millis(100),
    ));
    // sleep(1 s): 0.333 s real (1.0 undilated). Created first thing in the
    // block_on, it starts from a clock up to one move old (1 ms real, more if
    // the ticker thread is late): 0.32 is a loose lower bound. The others
    // start right after a wake-up, from an exact clock.
    check(
        "sleep(1 s) at ×3",
        sleep,
        (0.32, 0.8),
        Duration::from_secs(1),
    );
    check(
        "timeout(600 ms) at ×3",
        timeout,
        (0.199, 0.6),
        Duration::from_millis(600),
    );
    check(
        "3 ticks of 100 ms at ×3",
        interval,
        (0.099, 0.5),
        Duration::from_millis(300),
    );
}

#[test]
fn library_timers_run_ten_times_slower() {
    let _s = serial(0.1);
    let [sleep, timeout, interval] = rt().block_on(library_code(
        Duration::from_millis(50),
        Duration::from_millis(30),
        Duration::from_millis(10),
    ));
    // sleep(50 ms): 0.5 s real (0.05 s undilated); the clock the first
    // reads may be 1 ms of virtual time (10 ms real) old.
    check(
        "sleep(50 ms) at ×0.1",
        sleep,
        (0.49, 1.2),
        Duration::from_millis(50),
    );
    check(
        "timeout(30 ms) at ×0.1",
        timeout,
        (0.299, 1.0),
        Duration::from_millis(30),
    );
    check(
        "3 ticks of 10 ms at ×0.1",
        interval,
        (0.299, 1.0),
        Duration::from_millis(30),
    );
}

/// Waits `real` of real time without a tokio timer (a thread): what a real
/// I/O wait looks like to the runtime.
async fn real_wait(real: Duration) {
    tokio::task::spawn_blocking(move || std::thread::sleep(real))
        .await
        .expect("blocking task");
}

#[test]
fn a_change_of_dilation_applies_to_the_rest_of_a_sleep() {
    let _s = serial(1.0);
    let rt = rt();
    // 2 s of virtual time: 0.4 s at ×1, then ×16 for the remaining 1.6 s
    // (0.1 s real): 0.5 s in all (2 s without the change). A change late by
    // δ adds about δ.
    let real = RealInstant::now();
    let took = rt.block_on(async {
        let sleeper = tokio::spawn(async {
            tokio::time::sleep(Duration::from_secs(2)).await;
            RealInstant::now()
        });
        real_wait(Duration::from_millis(400)).await;
        testing::set_dilation(16.0);
        sleeper.await.expect("sleeper")
    });
    let took = secs(took - real);
    assert!(
        (0.49..1.4).contains(&took),
        "took {took} s (2 s without the change)"
    );

    // The other way, made from another thread while the runtime is idle:
    // ×10 for 0.1 s real (1 virtual second of 4), then ×2 for the remaining
    // 3: 1.6 s (0.4 s without the change). A change late by δ shortens it
    // by 4δ.
    testing::set_dilation(10.0);
    let real = RealInstant::now();
    let changer = std::thread::spawn(|| {
        std::thread::sleep(Duration::from_millis(100));
        testing::set_dilation(2.0);
    });
    rt.block_on(async { tokio::time::sleep(Duration::from_secs(4)).await });
    let took = secs(real.elapsed());
    changer.join().expect("changer");
    assert!(
        (0.8..3.5).contains(&took),
        "took {took} s (0.4 s without the change)"
    );
}

/// A server on 127.0.0.1 in a plain thread: reads one byte, sleeps `delay`
/// of real time, answers with the byte + 1.
fn slow_echo(delay: Duration) -> (std::net::SocketAddr, std::thread::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let server = std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().expect("accept");
        let mut b = [0u8];
        conn.read_exact(&mut b).expect("read");
        std::thread::sleep(delay);
        conn.write_all(&[b[0].wrapping_add(1)]).expect("write");
    });
    (addr, server)
}

async fn round_trip(addr: std::net::SocketAddr) -> u8 {
    let mut conn = tokio::net::TcpStream::connect(addr).await.expect("connect");
    conn.write_all(&[41]).await.expect("write");
    let mut b = [0u8];
    conn.read_exact(&mut b).await.expect("read");
    b[0]
}

#[test]
fn real_tcp_keeps_real_time() {
    let _s = serial(0.01);
    let (addr, server) = slow_echo(Duration::from_millis(50));
    let real = RealInstant::now();
    let (answer, virt) = rt().block_on(async {
        let virt = Instant::now();
        // 1 s of virtual time would be 100 s real: the round trip does not
        // wait for timers.
        let answer = tokio::time::timeout(Duration::from_secs(1), round_trip(addr))
            .await
            .expect("round trip timed out");
        (answer, virt.elapsed())
    });
    let took = real.elapsed();
    server.join().expect("server");
    assert_eq!(answer, 42);
    // 50 ms of real time (5 s if I/O were dilated like the timers).
    assert!(
        (0.05..1.0).contains(&secs(took)),
        "round trip took {took:?} real"
    );
    // ... which is 0.5 ms of virtual time, seen in steps of 1 ms.
    assert!(virt <= Duration::from_millis(12), "{virt:?} virtual");
}

#[test]
fn an_idle_runtime_does_not_leap_to_its_next_timer() {
    // While the main task waits for a socket and a spawned task sleeps
    // 10 s, a plain paused runtime jumps to the sleep's end at once; the
    // dilated one lets 0.3 s go by at ×1 (and 0.9 s at ×3).
    for (dilation, virtual_secs) in [(1.0, 0.3), (3.0, 0.9)] {
        let _s = serial(dilation);
        let (addr, server) = slow_echo(Duration::from_millis(300));
        let (done, virt, real) = rt().block_on(async {
            let sleeper = tokio::spawn(tokio::time::sleep(Duration::from_secs(10)));
            let (virt, real) = (Instant::now(), RealInstant::now());
            assert_eq!(round_trip(addr).await, 42);
            (sleeper.is_finished(), virt.elapsed(), real.elapsed())
        });
        server.join().expect("server");
        assert!(
            !done,
            "sleep(10 s) ended during 0.3 s of real I/O at ×{dilation}"
        );
        // The end is read up to a step late (3 ms at ×3), more when the
        // ticker is late on a busy machine.
        assert!(
            (virtual_secs - 0.01..virtual_secs * 3.0).contains(&secs(virt)),
            "{real:?} of real I/O at ×{dilation} was {virt:?} of virtual time"
        );
    }

    // The control: tokio's paused clock alone does leap.
    let (addr, server) = slow_echo(Duration::from_millis(300));
    let paused = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .expect("runtime");
    let virt = paused.block_on(async {
        let _sleeper = tokio::spawn(tokio::time::sleep(Duration::from_secs(10)));
        let virt = Instant::now();
        assert_eq!(round_trip(addr).await, 42);
        virt.elapsed()
    });
    server.join().expect("server");
    assert!(virt >= Duration::from_secs(10), "plain pause: {virt:?}");
}

/// `a − b` in seconds, either sign.
fn signed(a: Instant, b: Instant) -> f64 {
    match a.checked_duration_since(b) {
        Some(d) => secs(d),
        None => -secs(b - a),
    }
}

#[test]
fn the_process_wide_clock_is_the_runtimes_clock() {
    let _s = serial(4.0);
    let rt = rt();
    // The process-wide clock read from a thread outside any runtime, minus
    // the runtime's clock (read just after a wake-up, when it is exact). The
    // runtime's clock starts at its own origin: the offset is constant, not
    // zero.
    let offset = || {
        rt.block_on(async {
            tokio::task::spawn_blocking(|| ()).await.expect("blocking");
            let inside = Instant::now();
            let outside = std::thread::spawn(testing::now).join().expect("thread");
            signed(outside, inside)
        })
    };
    let before = offset();
    let (same, on_global, on_own, virt) = rt.block_on(async {
        let virt = Instant::now();
        // Inside, the process-wide clock reads the runtime's clock, exactly.
        let same = testing::now() == Instant::now();
        let real = RealInstant::now();
        testing::sleep(Duration::from_millis(400)).await;
        let on_global = real.elapsed();
        // A Clock of its own runs on the runtime's time: ×2 on top of ×4.
        let real = RealInstant::now();
        Clock::new(2.0).sleep(Duration::from_millis(800)).await;
        let on_own = real.elapsed();
        (same, on_global, on_own, virt.elapsed())
    });
    let after = offset();
    assert!(
        same,
        "the process-wide clock and the runtime disagree inside it"
    );
    // 400 ms at ×4: 0.1 s real (the first, created first thing in the
    // block_on, from a clock up to one move old); 800 ms at ×8: 0.1 s real.
    assert!(
        (0.09..0.5).contains(&secs(on_global)),
        "testing::sleep(400 ms) at ×4 took {on_global:?}"
    );
    assert!(
        (0.099..0.5).contains(&secs(on_own)),
        "Clock::new(2.0).sleep(800 ms) at ×4 took {on_own:?}"
    );
    assert!(virt >= Duration::from_millis(800), "{virt:?}");
    // Over those 0.8 s of virtual time, the runtime's clock and the
    // process-wide clock outside it kept the same pace. Each offset is off
    // by the thread start-up (×4) and one step (4 ms): 100 ms is 25 ms of
    // real slack, while any other pace (a ×16 double dilation, or ×1) would
    // drift by seconds.
    assert!(
        (after - before).abs() < 0.1,
        "offset {before} s, then {after} s"
    );
}

#[test]
fn virtual_time_flows_between_block_on_calls_and_in_blocking_tasks() {
    let _s = serial(5.0);
    let rt = rt();
    let t0 = rt.block_on(async { Instant::now() });
    std::thread::sleep(Duration::from_millis(100));
    let (t1, seen_in_thread) = rt.block_on(async {
        // Read right after a wake-up of the runtime (here, the end of a
        // blocking task), when the clock is exact.
        tokio::task::spawn_blocking(|| ()).await.expect("blocking");
        let t1 = Instant::now();
        // A blocking task reads the runtime's clock, which keeps flowing
        // while it blocks for 100 ms real.
        let seen = tokio::task::spawn_blocking(|| {
            let a = Instant::now();
            std::thread::sleep(Duration::from_millis(100));
            Instant::now() - a
        })
        .await
        .expect("blocking");
        (t1, seen)
    });
    // 100 ms real at ×5 = 500 ms virtual, kept moving by the ticker while no
    // block_on runs. The first reading may be old (it only makes the gap
    // longer); the second is exact.
    let gap = t1 - t0;
    assert!(
        (Duration::from_millis(499)..Duration::from_secs(3)).contains(&gap),
        "{gap:?} between two block_on calls"
    );
    // In a blocking task the clock is as old as the ticker's last move (10 ms
    // of virtual time while the runtime is parked, more when the ticker
    // thread is late on a busy machine): 450 ms is a loose lower bound, far
    // above the 100 ms of an undilated clock.
    assert!(
        (Duration::from_millis(450)..Duration::from_secs(3)).contains(&seen_in_thread),
        "{seen_in_thread:?} seen by a blocking task"
    );
}

#[test]
fn dropping_the_runtime_is_prompt_even_at_the_slowest_dilation() {
    // At ×0.001 the driver ticks once a second; dropping must not wait for
    // the tick (the blocking pool waits for its threads).
    let _s = serial(testing::MIN_DILATION);
    let rt = rt();
    rt.block_on(tokio::task::yield_now());
    let real = RealInstant::now();
    drop(rt);
    let took = real.elapsed();
    assert!(took < Duration::from_millis(500), "drop took {took:?}");
    // And the process-wide clock is no longer the runtime's.
    let plain = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime");
    let real = RealInstant::now();
    plain.block_on(testing::sleep(Duration::from_micros(100)));
    // 100 µs at ×0.001: 0.1 s real.
    assert!(real.elapsed() >= Duration::from_millis(99));
}

#[test]
fn a_resumed_clock_falls_back_to_real_time() {
    // Not a way to use it, but it must not hang or spin: after
    // `tokio::time::resume` the runtime runs on real time (tokio prints the
    // panic of the driver's refused `advance` once) and drops promptly.
    let _s = serial(10.0);
    let rt = rt();
    let took = rt.block_on(async {
        tokio::time::resume();
        let real = RealInstant::now();
        tokio::time::sleep(Duration::from_millis(200)).await;
        real.elapsed()
    });
    // 200 ms of real time now, not 20 ms; the upper bound only says "did not
    // hang" (a loaded CI machine has been seen taking 2.1 s here).
    assert!(
        (0.199..10.0).contains(&secs(took)),
        "sleep(200 ms) after resume took {took:?}"
    );
    let real = RealInstant::now();
    drop(rt);
    assert!(real.elapsed() < Duration::from_millis(500));
}

#[test]
fn block_on_from_another_runtime() {
    let _s = serial(3.0);
    let dilated = std::sync::Arc::new(rt());
    let other = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    // From a blocking thread of another runtime: allowed, and dilated.
    let took = other.block_on({
        let dilated = std::sync::Arc::clone(&dilated);
        async move {
            tokio::task::spawn_blocking(move || {
                let real = RealInstant::now();
                dilated.block_on(async { tokio::time::sleep(Duration::from_millis(300)).await });
                real.elapsed()
            })
            .await
            .expect("blocking task")
        }
    });
    assert!(
        (0.09..0.29).contains(&secs(took)),
        "sleep(300 ms) at ×3 took {took:?}"
    );
    // From a task of another runtime: tokio refuses, as for any runtime.
    let refused = other.block_on(async {
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            dilated.block_on(async {});
        }))
        .is_err()
    });
    assert!(
        refused,
        "block_on inside another runtime's task was allowed"
    );
}
