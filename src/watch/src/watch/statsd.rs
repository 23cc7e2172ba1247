//! StatsD through cadence: a bounded queue drained by a background thread
//! over a non-blocking buffered UDP socket, so the watch never waits on the
//! network. Metric names follow the ancestor so dashboards keep working.

use cadence::prelude::*;
use cadence::{BufferedUdpMetricSink, QueuingMetricSink, StatsdClient};
use std::net::UdpSocket;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Metrics queued before new ones are dropped (never blocks).
const QUEUE: usize = 64 * 1024;

/// A connected StatsD client.
pub struct Stats {
    client: StatsdClient,
    sink: Arc<QueuingMetricSink>,
    errors: Arc<AtomicU64>,
    target: String,
    prefix: String,
    tags: Vec<(String, String)>,
}

impl std::fmt::Debug for Stats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Stats({})", self.target)
    }
}

/// Nanoseconds to whole milliseconds, rounded (StatsD timers are integer ms).
pub fn ms_rounded(ns: u64) -> u64 {
    ns.saturating_add(500_000) / 1_000_000
}

/// The queuing sink behind an `Arc`: dropping any clone of a
/// `QueuingMetricSink` stops its sender thread, so the clients of every
/// process of `watch --all` share one through this instead.
struct SharedSink(Arc<QueuingMetricSink>);

impl cadence::MetricSink for SharedSink {
    fn emit(&self, metric: &str) -> std::io::Result<usize> {
        self.0.emit(metric)
    }
    fn flush(&self) -> std::io::Result<()> {
        self.0.flush()
    }
}

fn client(
    prefix: &str,
    sink: &Arc<QueuingMetricSink>,
    errors: &Arc<AtomicU64>,
    tags: &[(String, String)],
) -> StatsdClient {
    let client_errors = Arc::clone(errors);
    let shared = SharedSink(Arc::clone(sink));
    let mut builder = StatsdClient::builder(prefix, shared).with_error_handler(move |_| {
        client_errors.fetch_add(1, Ordering::Relaxed);
    });
    for (k, v) in tags {
        builder = builder.with_tag(k.as_str(), v.as_str());
    }
    builder.build()
}

impl Stats {
    /// Connects to `host:port`. The name is resolved once; failing to resolve
    /// is an error (the caller warns and watches without StatsD). A host that
    /// is down is not: UDP is silent.
    pub fn connect(target: &str, prefix: &str, tags: &[(String, String)]) -> Result<Stats, String> {
        let socket = UdpSocket::bind("0.0.0.0:0").map_err(|e| format!("StatsD socket: {e}"))?;
        socket
            .set_nonblocking(true)
            .map_err(|e| format!("StatsD socket: {e}"))?;
        let udp = BufferedUdpMetricSink::from(target, socket)
            .map_err(|e| format!("StatsD at {target}: {e}"))?;
        let errors = Arc::new(AtomicU64::new(0));
        let sink_errors = Arc::clone(&errors);
        let sink = QueuingMetricSink::builder()
            .with_capacity(QUEUE)
            .with_error_handler(move |_| {
                sink_errors.fetch_add(1, Ordering::Relaxed);
            })
            .build(udp);
        let sink = Arc::new(sink);
        Ok(Stats {
            client: client(prefix, &sink, &errors, tags),
            sink,
            errors,
            target: target.to_string(),
            prefix: prefix.to_string(),
            tags: tags.to_vec(),
        })
    }

    /// A client with `extra` tags on top of ours, sending through the same
    /// queue and socket (one sender thread however many processes are
    /// watched; `watch --all` gives each its `pid:`, `comm:`... tags).
    pub fn with_tags(&self, extra: &[(String, String)]) -> Stats {
        let tags: Vec<(String, String)> = self.tags.iter().chain(extra).cloned().collect();
        Stats {
            client: client(&self.prefix, &self.sink, &self.errors, &tags),
            sink: Arc::clone(&self.sink),
            errors: Arc::clone(&self.errors),
            target: self.target.clone(),
            prefix: self.prefix.clone(),
            tags,
        }
    }

    /// `P.monitor_loop_lag`: one timing per tick, in ms.
    pub fn lag(&self, loop_name: &str, lag_ns: u64) {
        let _ = self
            .client
            .time_with_tags("monitor_loop_lag", ms_rounded(lag_ns))
            .with_tag("loop", loop_name)
            .try_send();
    }

    /// `P.loop_busy`: one loop iteration's busy time (wait call's return to
    /// its next entry), in ms, for a loop watched by its wait calls
    /// (`watch/syscall_loop.rs`), sent for a fraction `rate` (0 < rate ≤ 1)
    /// of the iterations: the timing carries `|@rate` so that the daemon
    /// scales the counts back.
    pub fn busy(&self, loop_name: &str, busy_ns: u64, rate: f64) {
        let metric = self
            .client
            .time_with_tags("loop_busy", ms_rounded(busy_ns))
            .with_tag("loop", loop_name);
        let metric = if rate < 1.0 && rate > 0.0 {
            metric.with_sampling_rate(rate)
        } else {
            metric
        };
        let _ = metric.try_send();
    }

    /// `P.loop_stall`: how long the loop is overdue, in ms.
    pub fn stall(&self, loop_name: &str, stall_ns: u64) {
        let _ = self
            .client
            .gauge_with_tags("loop_stall", stall_ns as f64 / 1e6)
            .with_tag("loop", loop_name)
            .try_send();
    }

    /// `P.hangs`: one more hang episode, tagged `cause:KIND` when known.
    pub fn hang(&self, loop_name: &str, cause: Option<&str>) {
        let mut metric = self
            .client
            .count_with_tags("hangs", 1)
            .with_tag("loop", loop_name);
        if let Some(kind) = cause {
            metric = metric.with_tag("cause", kind);
        }
        let _ = metric.try_send();
    }

    /// `P.dumps`: one more dump file written.
    pub fn dump(&self, loop_name: &str) {
        let _ = self
            .client
            .count_with_tags("dumps", 1)
            .with_tag("loop", loop_name)
            .try_send();
    }

    /// Errors so far (queue full, send failures).
    pub fn errors(&self) -> u64 {
        self.errors.load(Ordering::Relaxed)
    }

    /// Waits (at most `timeout`) for the queue to drain, then flushes the
    /// buffered socket, so nothing queued is lost at exit.
    pub fn drain(&self, timeout: Duration) {
        let start = Instant::now();
        while self.sink.queued() > 0 && start.elapsed() < timeout {
            std::thread::sleep(Duration::from_millis(2));
        }
        let _ = self.client.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lags_round_to_whole_milliseconds() {
        assert_eq!(ms_rounded(0), 0);
        assert_eq!(ms_rounded(499_999), 0);
        assert_eq!(ms_rounded(500_000), 1);
        assert_eq!(ms_rounded(1_502_000_000), 1502);
        assert_eq!(ms_rounded(u64::MAX), u64::MAX / 1_000_000);
    }

    #[test]
    fn packets_reach_a_real_udp_listener_with_tags() {
        let listener = UdpSocket::bind("127.0.0.1:0").expect("bind");
        listener
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let addr = listener.local_addr().expect("addr").to_string();
        let stats =
            Stats::connect(&addr, "aiodebug", &[("env".into(), "test".into())]).expect("connect");
        stats.lag("main", 12_400_000);
        stats.stall("main", 1_500_000_000);
        stats.hang("main", Some("lock"));
        stats.dump("main");
        stats.drain(Duration::from_secs(2));
        let mut got = String::new();
        let mut buf = [0u8; 65536];
        while !(got.contains("hangs") && got.contains("dumps") && got.contains("loop_stall")) {
            let n = listener.recv(&mut buf).expect("packet");
            got.push_str(&String::from_utf8_lossy(&buf[..n]));
            got.push('\n');
        }
        assert!(got.contains("aiodebug.monitor_loop_lag:12|ms|#"), "{got}");
        assert!(
            got.contains("loop:main") && got.contains("env:test"),
            "{got}"
        );
        assert!(got.contains("aiodebug.loop_stall:1500|g"), "{got}");
        assert!(
            got.contains("aiodebug.hangs:1|c") && got.contains("aiodebug.dumps:1|c"),
            "{got}"
        );
        let hangs = got
            .lines()
            .find(|l| l.starts_with("aiodebug.hangs"))
            .expect("hangs");
        assert!(hangs.contains("cause:lock"), "{hangs}");
    }

    #[test]
    fn a_tagged_client_that_ends_leaves_the_others_sending() {
        let listener = UdpSocket::bind("127.0.0.1:0").expect("bind");
        listener
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let addr = listener.local_addr().expect("addr").to_string();
        let base = Stats::connect(&addr, "aiodebug", &[("env".into(), "t".into())]).expect("c");
        let a = base.with_tags(&[("pid".into(), "1".into())]);
        let b = base.with_tags(&[("pid".into(), "2".into())]);
        a.hang("main", None);
        a.drain(Duration::from_secs(2));
        drop(a);
        b.hang("main", None);
        b.drain(Duration::from_secs(2));
        let mut got = String::new();
        let mut buf = [0u8; 65536];
        while !got.contains("pid:2") {
            let n = listener
                .recv(&mut buf)
                .expect("packet after a client ended");
            got.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
        assert!(got.contains("env:t,pid:2,loop:main"), "{got}");
    }

    #[test]
    fn an_unresolvable_host_is_an_error_not_a_panic() {
        assert!(Stats::connect("no-such-host.invalid:8125", "p", &[]).is_err());
        assert!(Stats::connect("not an address", "p", &[]).is_err());
    }

    #[test]
    fn nobody_listening_is_silent_and_never_blocks() {
        // A port nobody listens on (bound then closed).
        let port = UdpSocket::bind("127.0.0.1:0")
            .and_then(|s| s.local_addr())
            .expect("port")
            .port();
        let stats = Stats::connect(&format!("127.0.0.1:{port}"), "p", &[]).expect("connect");
        let start = Instant::now();
        for i in 0..10_000u64 {
            stats.lag("main", i * 1000);
        }
        stats.drain(Duration::from_secs(2));
        assert!(start.elapsed() < Duration::from_secs(5));
    }
}
