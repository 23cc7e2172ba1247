//! The README's first command: the demo catches the bundled service's hang
//! while it lasts, writes three snapshots and names the blocking function.

mod support;

use std::process::Command;

#[test]
fn the_demo_catches_the_hang_and_names_the_culprit() {
    // Removed on drop, also when the test fails.
    let dir = support::TempDir::new("demo-test");
    let out = Command::new(support::watch_bin())
        .args(["demo", "--output-dir"])
        .arg(dir.path())
        .output()
        .expect("run demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("HANG: loop 'main'"), "{stdout}");
    assert!(
        stdout.contains(
            "demo: the loop was blocked in aiodebug_watch::demo::handle_request_synchronously"
        ),
        "{stdout}"
    );
    let files: Vec<_> = std::fs::read_dir(dir.path())
        .expect("demo dir")
        .map(|e| e.expect("entry").path())
        .collect();
    assert_eq!(files.len(), 3, "{files:?}");
    for f in &files {
        assert!(
            stdout.contains(&*f.to_string_lossy()),
            "{} not named",
            f.display()
        );
    }
}
