//! Writing hang dumps: the ancestor's names, never a partial file under a
//! final name, never through a symlink, never over an existing file, within a
//! byte budget; a full disk is a warning, not a crash.

use nix::fcntl::OFlag;
use nix::sys::stat::Mode;
use std::fs::{File, Permissions};
use std::io::Write;
use std::os::fd::OwnedFd;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// Mode of dump files: they may name internals; group-readable at most.
pub const FILE_MODE: u32 = 0o640;

/// The ancestor's file name: `stacktrace-YYYYMMDD-HHMMSS.ffffff-N.txt`, local time.
pub fn dump_file_name<Tz: chrono::TimeZone>(at: &chrono::DateTime<Tz>, n: u32) -> String
where
    Tz::Offset: std::fmt::Display,
{
    format!("stacktrace-{}-{n}.txt", at.format("%Y%m%d-%H%M%S%.6f"))
}

/// What became of one write.
#[derive(Debug)]
pub enum Outcome {
    /// Written completely under this path.
    Written(PathBuf, u64),
    /// Skipped: the byte budget is spent (nothing deleted).
    OverBudget {
        /// Bytes written so far.
        used: u64,
        /// The budget.
        budget: u64,
    },
    /// Failed (disk full, I/O error); the temporary file was removed.
    Failed(String),
    /// Not written: dumps are off (said once, by the `Failed` before).
    Off,
}

/// The output directory of a watch, opened once: every file is created and
/// renamed relative to that open directory (`openat`, `renameat2`), so
/// replacing the path by a symlink mid-watch redirects nothing. A directory
/// removed mid-watch is recreated once, with its mode and owner.
#[derive(Debug)]
pub struct OutputDir {
    dir: PathBuf,
    fd: OwnedFd,
    budget: u64,
    used: u64,
    /// Mode and owner it had when opened, for recreating it.
    mode: u32,
    owner: (u32, u32),
    /// Dumps are off: the directory went away and could not be recreated.
    off: bool,
}

/// Opens `dir` as a directory, refusing a symlink in its last component
/// unless `follow`.
fn open_dir(dir: &Path, follow: bool) -> std::io::Result<OwnedFd> {
    let mut flags = OFlag::O_DIRECTORY | OFlag::O_RDONLY | OFlag::O_CLOEXEC;
    if !follow {
        flags |= OFlag::O_NOFOLLOW;
    }
    nix::fcntl::open(dir, flags, Mode::empty()).map_err(std::io::Error::from)
}

impl OutputDir {
    /// Creates `dir` if needed, opens it (a symlink is refused unless
    /// `follow_symlinks`) and proves it writable by creating and removing a
    /// probe file; a clear error otherwise.
    pub fn open(dir: &Path, budget: u64, follow_symlinks: bool) -> Result<OutputDir, String> {
        let shown = dir.display();
        match std::fs::symlink_metadata(dir) {
            Ok(m) if m.file_type().is_symlink() && !follow_symlinks => {
                return Err(format!(
                    "output directory {shown} is a symbolic link; refusing it (a link can redirect \
                     dumps written as root); pass --follow-symlinks to use it anyway"
                ))
            }
            Ok(m) if !m.file_type().is_symlink() && !m.is_dir() => {
                return Err(format!("output directory {shown} is not a directory"))
            }
            Ok(_) => {}
            Err(_) => std::fs::create_dir_all(dir)
                .map_err(|e| format!("output directory {shown}: {e}"))?,
        }
        let fd = open_dir(dir, follow_symlinks).map_err(|e| match e.raw_os_error() {
            Some(nix::libc::ENOTDIR) => format!("output directory {shown} is not a directory"),
            Some(nix::libc::ELOOP) => format!("output directory {shown} is a symbolic link"),
            _ => format!("output directory {shown}: {e}"),
        })?;
        let st =
            nix::sys::stat::fstat(&fd).map_err(|e| format!("output directory {shown}: {e}"))?;
        let probe = format!(".aiodebug-watch-probe-{}", std::process::id());
        let created = create_exclusive_at(&fd, &probe);
        let _ = nix::unistd::unlinkat(&fd, probe.as_str(), nix::unistd::UnlinkatFlags::NoRemoveDir);
        created.map_err(|e| format!("output directory {shown} is not writable: {e}"))?;
        Ok(OutputDir {
            dir: dir.to_path_buf(),
            fd,
            budget,
            used: 0,
            mode: st.st_mode & 0o7777,
            owner: (st.st_uid, st.st_gid),
            off: false,
        })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// Bytes written so far.
    pub fn used(&self) -> u64 {
        self.used
    }

    /// If the open directory was removed (no links left), recreates it at
    /// its path with the same mode and owner and opens that. `Err` says why
    /// dumps are off from now on.
    fn ensure_present(&mut self) -> Result<(), String> {
        let linked = nix::sys::stat::fstat(&self.fd)
            .map(|st| st.st_nlink > 0)
            .unwrap_or(false);
        if linked {
            return Ok(());
        }
        let shown = self.dir.display();
        let recreate = || -> std::io::Result<OwnedFd> {
            match std::fs::create_dir(&self.dir) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(e),
            }
            let fd = open_dir(&self.dir, false)?;
            nix::unistd::fchown(&fd, Some(self.owner.0.into()), Some(self.owner.1.into()))
                .map_err(std::io::Error::from)?;
            nix::sys::stat::fchmod(&fd, Mode::from_bits_truncate(self.mode as _))
                .map_err(std::io::Error::from)?;
            Ok(fd)
        };
        match recreate() {
            Ok(fd) => {
                self.fd = fd;
                Ok(())
            }
            Err(e) => {
                self.off = true;
                Err(format!(
                    "output directory {shown} was removed and cannot be recreated ({e}): dumps are off from now on"
                ))
            }
        }
    }

    /// Writes `contents` as `name` (or, if that name is taken, `stem.1.txt`,
    /// `stem.2.txt`, …): to a temporary name first, then renamed without
    /// replacing anything.
    pub fn write(&mut self, name: &str, contents: &[u8]) -> Outcome {
        if self.off {
            return Outcome::Off;
        }
        let len = contents.len() as u64;
        if self.used.saturating_add(len) > self.budget {
            return Outcome::OverBudget {
                used: self.used,
                budget: self.budget,
            };
        }
        if let Err(why) = self.ensure_present() {
            return Outcome::Failed(why);
        }
        let tmp = format!(".{name}.tmp-{}", std::process::id());
        let mut file = match create_exclusive_at(&self.fd, &tmp) {
            Ok(f) => f,
            // Whatever is there is not ours: leave it.
            Err(e) => {
                return Outcome::Failed(format!(
                    "cannot write {}: {e}",
                    self.dir.join(name).display()
                ))
            }
        };
        let written = file.write_all(contents).and_then(|()| file.flush());
        drop(file);
        if let Err(e) = written {
            let _ = nix::unistd::unlinkat(
                &self.fd,
                tmp.as_str(),
                nix::unistd::UnlinkatFlags::NoRemoveDir,
            );
            return Outcome::Failed(format!(
                "cannot write {}: {e}",
                self.dir.join(name).display()
            ));
        }
        let (stem, ext) = name.rsplit_once('.').unwrap_or((name, ""));
        let mut last = None;
        // Bounded: a directory with 100 files of one name is hostile.
        for n in 0..100u32 {
            let candidate = match n {
                0 => name.to_string(),
                n if ext.is_empty() => format!("{stem}.{n}"),
                n => format!("{stem}.{n}.{ext}"),
            };
            match nix::fcntl::renameat2(
                &self.fd,
                tmp.as_str(),
                &self.fd,
                candidate.as_str(),
                nix::fcntl::RenameFlags::RENAME_NOREPLACE,
            ) {
                Ok(()) => {
                    self.used += len;
                    return Outcome::Written(self.dir.join(candidate), len);
                }
                Err(nix::errno::Errno::EEXIST) => last = Some(nix::errno::Errno::EEXIST),
                Err(e) => {
                    last = Some(e);
                    break;
                }
            }
        }
        let _ = nix::unistd::unlinkat(
            &self.fd,
            tmp.as_str(),
            nix::unistd::UnlinkatFlags::NoRemoveDir,
        );
        Outcome::Failed(format!(
            "cannot write {}: {}",
            self.dir.join(name).display(),
            last.map(|e| e.desc()).unwrap_or("no free name")
        ))
    }
}

/// Creates a new file `name` in the directory `dir`: fails if anything
/// exists there, symlinks included. The mode is exactly [`FILE_MODE`].
fn create_exclusive_at(dir: &OwnedFd, name: &str) -> std::io::Result<File> {
    let fd = nix::fcntl::openat(
        dir,
        name,
        OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::from_bits_truncate(FILE_MODE as _),
    )
    .map_err(std::io::Error::from)?;
    let f = File::from(fd);
    // Whatever the umask, the mode is exactly FILE_MODE.
    f.set_permissions(Permissions::from_mode(FILE_MODE))?;
    Ok(f)
}

/// Writes `contents` to `path` the way hang dumps are written: a temporary
/// file beside it (exclusive, no symlink followed), then renamed into place
/// without replacing anything — or, with `replace`, replacing a regular
/// file (never a symlink or anything else).
pub fn write_file(path: &Path, contents: &[u8], replace: bool) -> Result<(), String> {
    let shown = path.display();
    let (dir, name) = match (path.parent(), path.file_name().and_then(|n| n.to_str())) {
        (Some(d), Some(n)) => (
            if d.as_os_str().is_empty() {
                Path::new(".")
            } else {
                d
            },
            n,
        ),
        _ => return Err(format!("cannot write {shown}: not a file name")),
    };
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_symlink() => {
            return Err(format!(
                "cannot write {shown}: it is a symbolic link; refusing to follow it"
            ))
        }
        Ok(m) if !m.is_file() => return Err(format!("cannot write {shown}: not a regular file")),
        Ok(_) if !replace => {
            return Err(format!(
                "cannot write {shown}: it exists (pass --force to replace it)"
            ))
        }
        _ => {}
    }
    let dfd = open_dir(dir, true).map_err(|e| format!("cannot write {shown}: {e}"))?;
    let tmp = format!(".{name}.tmp-{}", std::process::id());
    let result = create_exclusive_at(&dfd, &tmp)
        .and_then(|mut f| {
            f.write_all(contents)?;
            f.flush()
        })
        .and_then(|()| {
            let flags = if replace {
                nix::fcntl::RenameFlags::empty()
            } else {
                nix::fcntl::RenameFlags::RENAME_NOREPLACE
            };
            nix::fcntl::renameat2(&dfd, tmp.as_str(), &dfd, name, flags)
                .map_err(std::io::Error::from)
        });
    if let Err(e) = result {
        let _ = nix::unistd::unlinkat(&dfd, tmp.as_str(), nix::unistd::UnlinkatFlags::NoRemoveDir);
        return Err(if e.kind() == std::io::ErrorKind::AlreadyExists {
            format!("cannot write {shown}: it exists (pass --force to replace it)")
        } else {
            format!("cannot write {shown}: {e}")
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn tempdir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("aiodebug-files-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn names_follow_the_ancestor() {
        let at = chrono::FixedOffset::east_opt(3600)
            .and_then(|tz| tz.with_ymd_and_hms(2026, 11, 23, 9, 5, 7).single())
            .map(|t| t + chrono::Duration::microseconds(42))
            .expect("time");
        assert_eq!(
            dump_file_name(&at, 2),
            "stacktrace-20261123-090507.000042-2.txt"
        );
    }

    #[test]
    fn writes_atomically_with_mode_0640_and_never_replaces() {
        let d = tempdir("write");
        let mut out = OutputDir::open(&d, 1 << 20, false).expect("open");
        let Outcome::Written(p, n) = out.write("a.txt", b"hello") else {
            panic!("not written")
        };
        assert_eq!(
            (std::fs::read(&p).expect("read"), n),
            (b"hello".to_vec(), 5)
        );
        let mode = std::fs::metadata(&p).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode, 0o640);
        // Same name again: written under the next free name, the first file
        // intact, no temp left.
        let Outcome::Written(p2, _) = out.write("a.txt", b"other") else {
            panic!("not written under another name")
        };
        assert_eq!(p2, d.join("a.1.txt"));
        assert_eq!(std::fs::read(&p).expect("read"), b"hello");
        assert_eq!(std::fs::read(&p2).expect("read"), b"other");
        let mut names: Vec<_> = std::fs::read_dir(&d)
            .expect("dir")
            .map(|e| e.expect("entry").file_name())
            .collect();
        names.sort();
        assert_eq!(names, ["a.1.txt", "a.txt"]);
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn symlinks_are_not_followed() {
        let d = tempdir("link");
        let mut out = OutputDir::open(&d, 1 << 20, false).expect("open");
        let victim = d.join("victim");
        std::fs::write(&victim, b"keep").expect("victim");
        // At the temporary name: the write fails.
        let tmp = format!(".b.txt.tmp-{}", std::process::id());
        std::os::unix::fs::symlink(&victim, d.join(&tmp)).expect("symlink");
        assert!(matches!(out.write("b.txt", b"evil"), Outcome::Failed(_)));
        // At the final name: not replaced, the dump goes beside it.
        std::fs::remove_file(d.join(&tmp)).expect("unlink");
        std::os::unix::fs::symlink(&victim, d.join("c.txt")).expect("symlink");
        assert!(
            matches!(out.write("c.txt", b"evil"), Outcome::Written(ref p, _) if p.ends_with("c.1.txt"))
        );
        assert_eq!(std::fs::read(&victim).expect("victim"), b"keep");
        // A directory that is a symlink is refused unless asked for.
        let link = d.with_extension("dirlink");
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&d, &link).expect("symlink");
        let err = OutputDir::open(&link, 1, false).expect_err("a symlink");
        assert!(
            err.contains("symbolic link") && err.contains("--follow-symlinks"),
            "{err}"
        );
        assert!(OutputDir::open(&link, 1, true).is_ok());
        let _ = std::fs::remove_file(&link);
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn replacing_the_directory_by_a_symlink_redirects_nothing() {
        let d = tempdir("swap");
        let elsewhere = tempdir("swap-target");
        std::fs::create_dir_all(&elsewhere).expect("mkdir");
        let mut out = OutputDir::open(&d, 1 << 20, false).expect("open");
        let moved = d.with_extension("moved");
        let _ = std::fs::remove_dir_all(&moved);
        std::fs::rename(&d, &moved).expect("move the directory away");
        std::os::unix::fs::symlink(&elsewhere, &d).expect("symlink in its place");
        assert!(matches!(out.write("x.txt", b"dump"), Outcome::Written(..)));
        // Written into the directory that was opened, not through the link.
        assert!(moved.join("x.txt").exists());
        assert!(!elsewhere.join("x.txt").exists());
        let _ = std::fs::remove_file(&d);
        let _ = std::fs::remove_dir_all(&moved);
        let _ = std::fs::remove_dir_all(&elsewhere);
    }

    #[test]
    fn the_budget_skips_and_deletes_nothing() {
        let d = tempdir("budget");
        let mut out = OutputDir::open(&d, 10, false).expect("open");
        assert!(matches!(
            out.write("1.txt", b"123456"),
            Outcome::Written(..)
        ));
        assert!(matches!(
            out.write("2.txt", b"123456"),
            Outcome::OverBudget {
                used: 6,
                budget: 10
            }
        ));
        assert!(d.join("1.txt").exists() && !d.join("2.txt").exists());
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_removed_directory_is_recreated_with_its_mode() {
        let d = tempdir("gone");
        std::fs::create_dir_all(&d).expect("mkdir");
        std::fs::set_permissions(&d, Permissions::from_mode(0o750)).expect("chmod");
        let mut out = OutputDir::open(&d, 1 << 20, false).expect("open");
        std::fs::remove_dir_all(&d).expect("remove");
        assert!(matches!(out.write("c.txt", b"x"), Outcome::Written(..)));
        assert!(d.join("c.txt").exists());
        let mode = std::fs::metadata(&d).expect("meta").permissions().mode() & 0o7777;
        assert_eq!(mode, 0o750);
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_directory_that_cannot_be_recreated_turns_dumps_off_once() {
        let parent = tempdir("gone-parent");
        let d = parent.join("dumps");
        let mut out = OutputDir::open(&d, 1 << 20, false).expect("open");
        std::fs::remove_dir_all(&parent).expect("remove");
        // Its parent is gone too: said once, then quiet.
        assert!(
            matches!(out.write("c.txt", b"x"), Outcome::Failed(ref why) if why.contains("dumps are off"))
        );
        assert!(matches!(out.write("d.txt", b"x"), Outcome::Off));
    }

    #[test]
    fn an_unwritable_directory_is_refused_at_start() {
        assert!(OutputDir::open(Path::new("/proc/1"), 1, false).is_err());
        let err = OutputDir::open(Path::new("/proc/version/x"), 1, false).expect_err("not a dir");
        assert!(err.contains("/proc/version/x"), "{err}");
        let err = OutputDir::open(Path::new("/proc/version"), 1, false).expect_err("a file");
        assert!(err.contains("not a directory"), "{err}");
    }
}
