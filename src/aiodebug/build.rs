//! Declares the `tokio_unstable` cfg (set through RUSTFLAGS, as tokio asks)
//! so that `#[cfg(tokio_unstable)]` is not an unexpected cfg.
fn main() {
    println!("cargo::rustc-check-cfg=cfg(tokio_unstable)");
    println!("cargo::rerun-if-changed=build.rs");
}
