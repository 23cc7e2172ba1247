/*
 * aiodebug.h — a heartbeat for event loops written in C, C++, Python...,
 * readable from outside the process by `aiodebug-watch` (status, list,
 * watch, dump), exactly like a Rust service linking the `aiodebug` crate.
 *
 * Build the library (workspace package `aiodebug-ffi`):
 *
 *     cargo build --release -p aiodebug-ffi
 *     # -> target/release/libaiodebug.so and target/release/libaiodebug.a
 *
 * Link it:
 *
 *     cc -I src/aiodebug-ffi/include loop.c target/release/libaiodebug.so
 *     cc -I src/aiodebug-ffi/include loop.c target/release/libaiodebug.a \
 *        -lpthread -ldl -lm -lrt -lutil -lgcc_s -lc
 *
 * (The extra libraries are what a Rust static library needs on Linux;
 * `cargo rustc -p aiodebug-ffi --crate-type staticlib -- --print
 * native-static-libs` prints the exact list for a toolchain.) From Python:
 * `ctypes.CDLL("libaiodebug.so")`.
 *
 * The library keeps a registry in its own memory, in the ELF section
 * `aiodebug_hb` (symbol `aiodebug_registry_0_1`): a 64-byte header, 64 loop
 * slots and a poll board of 64 per-thread entries. Its layout is a versioned
 * ABI (major AIODEBUG_ABI_MAJOR, minor AIODEBUG_ABI_MINOR) documented in
 * src/aiodebug/src/abi.rs; readers never need anything but that memory.
 *
 * Guarantees: no function blocks, none allocates except aiodebug_register,
 * none aborts or unwinds. NULL is accepted for every pointer (a NULL handle
 * is inert, a NULL string is empty). Names are UTF-8: loop names have
 * invalid bytes replaced, task names and files are cut at the first invalid
 * byte. Linux x86_64 and aarch64 keep a registry; elsewhere every function
 * is a no-op.
 */
#ifndef AIODEBUG_H
#define AIODEBUG_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* The registry layout this header describes. */
#define AIODEBUG_ABI_MAJOR 1
#define AIODEBUG_ABI_MINOR 2

/* A registered loop. Opaque; one thread at a time may use a handle (the
 * thread may change between calls). */
typedef struct aiodebug_heartbeat aiodebug_heartbeat;

/* Registers the loop `name` (at most 64 bytes are kept) that should tick
 * every `period_ns` nanoseconds (0: no fixed period). Each tick's lag is the
 * time since the previous tick minus the period. Returns a handle to pass to
 * the other functions and finally to aiodebug_unregister; when the registry
 * is full (64 loops) the handle is inert (aiodebug_is_registered returns 0)
 * and watchers report the refusal. Returns NULL only if memory runs out. */
aiodebug_heartbeat *aiodebug_register(const char *name, uint64_t period_ns);

/* Records one iteration of the loop, now. About 35 ns; lock-free. */
void aiodebug_tick(aiodebug_heartbeat *hb);

/* Records one iteration with a lag the caller measured (for example: actual
 * minus scheduled wake-up of a timer), in nanoseconds. */
void aiodebug_tick_with_lag(aiodebug_heartbeat *hb, uint64_t lag_ns);

/* 1 if the loop got a slot, 0 if the handle is inert or NULL. */
int aiodebug_is_registered(const aiodebug_heartbeat *hb);

/* Frees the loop's slot and the handle. The handle must not be used again. */
void aiodebug_unregister(aiodebug_heartbeat *hb);

/* Registrations refused so far because the registry was full. */
uint64_t aiodebug_refused_registrations(void);

/* Slow-poll markers: "this thread now runs callback/task `task`, written at
 * `file`:`line`", until the matching aiodebug_poll_end on the same thread.
 * While it runs, watchers see which task the thread is polling and since
 * when (a hang dump names it). Markers nest (innermost first; 8 levels are
 * shown). Typical use, with the standard macros:
 *
 *     aiodebug_poll_begin("on_readable", __FILE__, __LINE__);
 *     on_readable(fd);
 *     uint64_t ns = aiodebug_poll_end();
 *     if (ns > 50000000) fprintf(stderr, "on_readable took %.3f s\n", ns / 1e9);
 *
 * The strings are copied (32 bytes of the name, the last 48 of the file). */
void aiodebug_poll_begin(const char *task, const char *file, uint32_t line);

/* Ends the innermost marker of this thread; returns how long it ran in ns,
 * 0 if there was none. */
uint64_t aiodebug_poll_end(void);

/* Lists this thread's markers under the loop `hb` in watchers' output
 * (without it, they are matched by the thread of the loop's last tick). */
void aiodebug_set_thread_loop(const aiodebug_heartbeat *hb);

/* (ABI major << 16) | ABI minor of the registry the library writes; compare
 * with AIODEBUG_ABI_MAJOR / AIODEBUG_ABI_MINOR. */
uint32_t aiodebug_abi_version(void);

/* The library's version, e.g. "0.1.0" (static storage). */
const char *aiodebug_version(void);

#ifdef __cplusplus
}
#endif

#endif /* AIODEBUG_H */
