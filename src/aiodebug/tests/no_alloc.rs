//! The slow-poll wrapper and the poll markers never allocate per poll: a
//! counting global allocator sees no allocation across 10,000 polls (after a
//! first poll that may set up the thread's state).

use aiodebug::polling::{self, Label};
use aiodebug::slow::LogSlowExt;
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

struct Counting;

thread_local! {
    // Per thread, so the test harness's other threads do not count.
    static ALLOCS: Cell<u64> = const { Cell::new(0) };
}

// SAFETY: forwards to the system allocator; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = ALLOCS.try_with(|c| c.set(c.get() + 1));
        // SAFETY: same contract as ours.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocs() -> u64 {
    ALLOCS.with(Cell::get)
}

struct Noop;
impl Wake for Noop {
    fn wake(self: Arc<Self>) {}
}

struct Pending;
impl Future for Pending {
    type Output = ();
    fn poll(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<()> {
        Poll::Pending
    }
}

#[test]
fn polls_do_not_allocate() {
    let waker = Waker::from(Arc::new(Noop));
    let mut cx = Context::from_waker(&waker);
    let mut fut = Box::pin(Pending.log_slow_named("orders", Duration::from_secs(5)));
    let label = Label::here("marker");
    // Warm-up: claims the thread's poll board entry.
    assert!(fut.as_mut().poll(&mut cx).is_pending());
    polling::begin(&label, 1);
    polling::end();
    let before = allocs();
    for _ in 0..10_000 {
        assert!(fut.as_mut().poll(&mut cx).is_pending());
        let p = polling::enter(&label);
        drop(p);
        polling::begin(&label, 2);
        assert!(polling::end().is_some());
    }
    assert_eq!(allocs() - before, 0, "allocations during 10,000 polls");
    // The counter does count: a Box allocates.
    let b = std::hint::black_box(Box::new(1u8));
    assert_eq!(allocs() - before, 1);
    drop(b);
}
