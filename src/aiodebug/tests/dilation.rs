//! The time-dilated clock against real elapsed time. Bounds are loose (a
//! shared 2-core machine): a sleep is never shorter than its dilated
//! duration minus the timer's 1 ms granularity, and "not much longer" means
//! well below what the undilated or wrongly dilated time would be.

use aiodebug::testing::{self, Clock};
use std::time::{Duration, Instant};

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime")
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

#[test]
fn dilation_three_runs_a_second_in_a_third() {
    let clock = Clock::new(3.0);
    let real = Instant::now();
    let virt = clock.now();
    rt().block_on(clock.sleep(Duration::from_secs(1)));
    let took = secs(real.elapsed());
    assert!(
        (0.33..0.9).contains(&took),
        "sleep(1 s) at ×3 took {took} s"
    );
    assert!(clock.now() - virt >= Duration::from_secs(1));
}

#[test]
fn dilation_below_one_slows_time_down() {
    let clock = Clock::new(0.1);
    let real = Instant::now();
    rt().block_on(clock.sleep(Duration::from_millis(100)));
    let took = secs(real.elapsed());
    assert!(
        (0.99..2.5).contains(&took),
        "sleep(100 ms) at ×0.1 took {took} s"
    );
}

#[test]
fn a_sleep_in_progress_follows_a_change_of_dilation() {
    // 2 s of virtual time: 0.4 s at ×1 (0.4 virtual), then ×16 for the
    // remaining 1.6 virtual seconds (0.1 s real): about 0.5 s in all, far
    // from the 2 s it would take without the change (a late change δ only
    // adds about δ).
    let clock = Clock::new(1.0);
    let rt = rt();
    let real = Instant::now();
    let changer = clock.clone();
    let took = rt.block_on(async move {
        let sleeper = tokio::spawn({
            let clock = clock.clone();
            async move {
                clock.sleep(Duration::from_secs(2)).await;
                Instant::now()
            }
        });
        tokio::time::sleep(Duration::from_millis(400)).await;
        changer.set_dilation(16.0);
        sleeper.await.expect("sleeper")
    });
    let took = secs(took - real);
    assert!(
        (0.49..1.4).contains(&took),
        "took {took} s (2 s without the change)"
    );

    // And the other way: ×10 for 0.1 s real (1 virtual second of 4), then
    // ×2 for the remaining 3: about 1.6 s, not the 0.4 s it would take at ×10.
    // A change late by δ shortens it by 4δ (more of it ran at ×10).
    let clock = Clock::new(10.0);
    let real = Instant::now();
    let changer = clock.clone();
    let took = rt.block_on(async move {
        let sleeper = tokio::spawn({
            let clock = clock.clone();
            async move {
                clock.sleep(Duration::from_secs(4)).await;
                Instant::now()
            }
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        changer.set_dilation(2.0);
        sleeper.await.expect("sleeper")
    });
    let took = secs(took - real);
    assert!(
        (0.8..3.5).contains(&took),
        "took {took} s (0.4 s without the change)"
    );
}

#[test]
fn interval_and_timeout_run_on_dilated_time() {
    let clock = Clock::new(4.0);
    let rt = rt();
    let real = Instant::now();
    let ticks = rt.block_on(async {
        let mut every = clock.interval(Duration::from_millis(100));
        let mut ticks = Vec::new();
        for _ in 0..6 {
            ticks.push(every.tick().await);
        }
        ticks
    });
    let took = secs(real.elapsed());
    // First tick at once, then 5 × 100 ms virtual = 125 ms real.
    assert!((0.12..0.8).contains(&took), "6 ticks took {took} s");
    for w in ticks.windows(2) {
        assert_eq!(w[1] - w[0], Duration::from_millis(100));
    }

    let clock = Clock::new(10.0);
    let real = Instant::now();
    let out = rt.block_on(clock.timeout(Duration::from_secs(2), std::future::pending::<()>()));
    let took = secs(real.elapsed());
    assert!(out.is_err());
    assert!(
        (0.19..1.0).contains(&took),
        "a 2 s timeout at ×10 took {took} s"
    );
    let ok = rt.block_on(clock.timeout(Duration::from_secs(2), async { 3 }));
    assert_eq!(ok, Ok(3));
}

#[test]
fn real_io_keeps_running_at_real_speed() {
    // Unlike tokio::time::pause, real work (here a thread sleeping 200 ms)
    // takes the same real time, and the dilated clock sees it dilated: 200 ms
    // real at ×5 is about 1 s of virtual time.
    let clock = Clock::new(5.0);
    let rt = rt();
    let virt = clock.now();
    rt.block_on(async {
        tokio::task::spawn_blocking(|| std::thread::sleep(Duration::from_millis(200)))
            .await
            .expect("blocking task");
    });
    let seen = clock.now() - virt;
    assert!(
        (Duration::from_millis(990)..Duration::from_secs(5)).contains(&seen),
        "{seen:?} of virtual time"
    );
}

#[test]
fn the_process_wide_clock_and_hostile_dilations() {
    assert_eq!(testing::set_dilation(f64::NAN), 1.0);
    assert_eq!(testing::set_dilation(-3.0), testing::MIN_DILATION);
    assert_eq!(testing::set_dilation(f64::INFINITY), testing::MAX_DILATION);
    assert_eq!(testing::set_dilation(8.0), 8.0);
    assert_eq!(testing::dilation(), 8.0);
    let real = Instant::now();
    rt().block_on(testing::sleep(Duration::from_millis(800)));
    let took = secs(real.elapsed());
    assert!((0.099..0.7).contains(&took), "800 ms at ×8 took {took} s");
    testing::set_dilation(1.0);
}
