//! Separate debug info fetched by build-id from debuginfod servers, as gdb,
//! eu-stack, perf and systemd-coredump do: `DEBUGINFOD_URLS` (URLs separated
//! by spaces, as elfutils reads it) is asked `GET URL/buildid/HEX/debuginfo`,
//! one URL after the other, and the answer is cached under
//! `$XDG_CACHE_HOME/aiodebug-watch/debuginfod/HEX/debuginfo` (else
//! `~/.cache/…`).
//!
//! Bounded in every way a hang dump cares about:
//! - time: one budget per dump ([`Debuginfod::begin`]); every fetch of that
//!   dump shares it, and once it is spent the rest are not tried. A fetch
//!   runs on a thread of its own, so even a name lookup that hangs (std's
//!   resolver has no timeout) costs the dump no more than the budget; the
//!   abandoned thread ends at its own socket timeouts, which are the same
//!   deadline.
//! - size: a file larger than [`Debuginfod::max_size`] is refused (by its
//!   `Content-Length`, or while it streams in); the body goes to a temporary
//!   file in 64 KiB pieces, never to memory, and is renamed into the cache
//!   only when complete and of the right build-id.
//!
//! Plain HTTP/1.1 over std's `TcpStream` only: an `https://` URL is skipped
//! with a note saying so (a TLS stack would be the engine's largest
//! dependency; a local debuginfod or a caching proxy on the host serves
//! plain HTTP). Redirects and chunked bodies are not followed either
//! (debuginfod itself answers with a `Content-Length`).

use std::fs::File;
use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use object::Object;

/// Default time budget of one dump's fetches.
pub const DEFAULT_BUDGET: Duration = Duration::from_secs(5);
/// Default largest debug file fetched (libc's is ~10 MB, a large C++
/// program's can pass 1 GB; `DEBUGINFOD_MAXSIZE` overrides it, as elfutils).
pub const DEFAULT_MAX_SIZE: u64 = 2 << 30;
/// Longest response head read.
const MAX_HEAD: usize = 16 * 1024;
/// Read size of the body.
const CHUNK: usize = 64 * 1024;

/// A debuginfod client: servers, cache directory and limits.
#[derive(Debug)]
pub struct Debuginfod {
    urls: Vec<String>,
    cache: PathBuf,
    budget: Duration,
    max_size: u64,
    /// End of the current dump's budget.
    deadline: Mutex<Option<Instant>>,
}

impl Debuginfod {
    /// A client of `urls` caching under `cache` (the directory that holds
    /// `HEX/debuginfo`).
    pub fn new(urls: Vec<String>, cache: PathBuf, budget: Duration, max_size: u64) -> Debuginfod {
        Debuginfod {
            urls,
            cache,
            budget,
            max_size,
            deadline: Mutex::new(None),
        }
    }

    /// The client the environment asks for: `None` when `DEBUGINFOD_URLS`
    /// is unset or names no URL. The cache is
    /// `$XDG_CACHE_HOME/aiodebug-watch/debuginfod` (else
    /// `$HOME/.cache/aiodebug-watch/debuginfod`, else
    /// `/var/cache/aiodebug-watch/debuginfod`); `DEBUGINFOD_MAXSIZE`
    /// (bytes) caps the file size, `AIODEBUG_DEBUGINFOD_BUDGET` (seconds, at
    /// most 600) sets the time budget of one dump. elfutils'
    /// `DEBUGINFOD_TIMEOUT` is not used for it: its meaning (90 s without
    /// progress, per server) is far from what a hang dump can wait.
    pub fn from_env() -> Option<Debuginfod> {
        let urls = parse_urls(&std::env::var("DEBUGINFOD_URLS").ok()?);
        if urls.is_empty() {
            return None;
        }
        let var = |k: &str| {
            std::env::var_os(k)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        };
        // Neither set (a service without a home): a system cache directory;
        // if it cannot be written, each fetch's note says so.
        let base = var("XDG_CACHE_HOME")
            .or_else(|| var("HOME").map(|h| h.join(".cache")))
            .unwrap_or_else(|| PathBuf::from("/var/cache"));
        let max_size = std::env::var("DEBUGINFOD_MAXSIZE")
            .ok()
            .and_then(|v| v.trim().parse::<u64>().ok())
            .filter(|&v| v > 0)
            .unwrap_or(DEFAULT_MAX_SIZE);
        let budget = std::env::var("AIODEBUG_DEBUGINFOD_BUDGET")
            .ok()
            .and_then(|v| v.trim().parse::<f64>().ok())
            .filter(|v| v.is_finite() && *v >= 0.0 && *v <= 600.0)
            .map(Duration::from_secs_f64)
            .unwrap_or(DEFAULT_BUDGET);
        Some(Debuginfod::new(
            urls,
            base.join("aiodebug-watch").join("debuginfod"),
            budget,
            max_size,
        ))
    }

    /// The servers, in the order they are asked.
    pub fn urls(&self) -> &[String] {
        &self.urls
    }

    /// The cache directory.
    pub fn cache_dir(&self) -> &Path {
        &self.cache
    }

    /// Largest file fetched, in bytes.
    pub fn max_size(&self) -> u64 {
        self.max_size
    }

    /// Starts the budget of a new dump: its fetches together take at most
    /// the budget from now.
    pub fn begin(&self) {
        let mut d = self.deadline.lock().unwrap_or_else(|e| e.into_inner());
        *d = Some(Instant::now() + self.budget);
    }

    /// Where the debug file of `build_id` is cached (whether or not it is).
    pub fn cached_path(&self, build_id: &[u8]) -> PathBuf {
        self.cache.join(hex(build_id)).join("debuginfo")
    }

    /// The debug file of `build_id`: from the cache, else fetched from the
    /// first server that has it (within the current budget; a fetch without
    /// [`Debuginfod::begin`] gets a budget of its own). `Err` says, per
    /// server, why not.
    pub fn fetch(&self, build_id: &[u8]) -> Result<PathBuf, String> {
        if build_id.is_empty() || build_id.len() > 64 {
            return Err("no usable build-id".into());
        }
        let cached = self.cached_path(build_id);
        if cached.is_file() {
            return Ok(cached);
        }
        let deadline = {
            let mut d = self.deadline.lock().unwrap_or_else(|e| e.into_inner());
            *d.get_or_insert_with(|| Instant::now() + self.budget)
        };
        let Some(left) = deadline
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
        else {
            return Err(format!(
                "not fetched: this dump's debuginfod budget ({:.1} s) is spent",
                self.budget.as_secs_f64()
            ));
        };
        let job = Job {
            urls: self.urls.clone(),
            dir: self.cache.join(hex(build_id)),
            build_id: build_id.to_vec(),
            deadline,
            max_size: self.max_size,
        };
        let (tx, rx) = std::sync::mpsc::channel();
        let spawned = std::thread::Builder::new()
            .name("debuginfod".into())
            .spawn(move || {
                let _ = tx.send(job.run());
            });
        if let Err(e) = spawned {
            return Err(format!("cannot start a fetch: {e}"));
        }
        match rx.recv_timeout(left) {
            Ok(r) => r,
            Err(_) => Err(format!(
                "not fetched within this dump's debuginfod budget ({:.1} s) from {}",
                self.budget.as_secs_f64(),
                self.urls.join(" ")
            )),
        }
    }
}

/// `DEBUGINFOD_URLS` split as elfutils does (on whitespace).
pub fn parse_urls(s: &str) -> Vec<String> {
    s.split_whitespace().map(str::to_string).collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// One fetch, run on its own thread.
struct Job {
    urls: Vec<String>,
    dir: PathBuf,
    build_id: Vec<u8>,
    deadline: Instant,
    max_size: u64,
}

impl Job {
    fn run(&self) -> Result<PathBuf, String> {
        let mut why = Vec::new();
        for url in &self.urls {
            match self.from(url) {
                Ok(p) => return Ok(p),
                Err(e) => why.push(format!("{url}: {e}")),
            }
        }
        Err(why.join("; "))
    }

    fn left(&self) -> Result<Duration, String> {
        self.deadline
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
            .ok_or_else(|| "timed out (the dump's budget)".to_string())
    }

    fn from(&self, url: &str) -> Result<PathBuf, String> {
        let u = Url::parse(url)?;
        let path = format!(
            "{}/buildid/{}/debuginfo",
            u.prefix.trim_end_matches('/'),
            hex(&self.build_id)
        );
        let addrs = (u.host.as_str(), u.port)
            .to_socket_addrs()
            .map_err(|e| format!("cannot resolve {}: {e}", u.host))?;
        let mut stream = None;
        let mut last = String::from("no address");
        for a in addrs {
            match TcpStream::connect_timeout(&a, self.left()?) {
                Ok(s) => {
                    stream = Some(s);
                    break;
                }
                Err(e) => last = format!("cannot connect to {a}: {e}"),
            }
        }
        let mut s = stream.ok_or(last)?;
        s.set_write_timeout(Some(self.left()?))
            .map_err(|e| e.to_string())?;
        let req = format!(
            "GET {path} HTTP/1.1\r\nHost: {}\r\nUser-Agent: aiodebug-watch/{}\r\nAccept: */*\r\nConnection: close\r\n\r\n",
            u.authority,
            env!("CARGO_PKG_VERSION")
        );
        s.write_all(req.as_bytes())
            .map_err(|e| format!("cannot send the request: {e}"))?;
        // The head, then what of the body came with it.
        let mut buf = Vec::with_capacity(4096);
        let mut piece = vec![0u8; CHUNK];
        let head_end = loop {
            if let Some(i) = find(&buf, b"\r\n\r\n") {
                break i + 4;
            }
            if buf.len() > MAX_HEAD {
                return Err("response head too long".into());
            }
            let n = self.read(&mut s, &mut piece)?;
            if n == 0 {
                return Err("connection closed before a response".into());
            }
            buf.extend_from_slice(&piece[..n]);
        };
        let head = parse_head(&buf[..head_end])?;
        if head.status != 200 {
            return Err(match head.status {
                404 => "not found (HTTP 404)".to_string(),
                c => format!("HTTP {c} {}", head.reason),
            });
        }
        if head.chunked {
            return Err("a chunked response (not supported)".into());
        }
        if let Some(len) = head.length {
            if len > self.max_size {
                return Err(format!(
                    "{len} bytes, more than the limit of {} (DEBUGINFOD_MAXSIZE)",
                    self.max_size
                ));
            }
        }
        std::fs::create_dir_all(&self.dir)
            .map_err(|e| format!("cannot create {}: {e}", self.dir.display()))?;
        let tmp = Temp::create(&self.dir)?;
        let mut file = tmp.file()?;
        let mut total = 0u64;
        let mut put = |bytes: &[u8], total: &mut u64| -> Result<(), String> {
            *total += bytes.len() as u64;
            if *total > self.max_size {
                return Err(format!(
                    "more than the limit of {} bytes (DEBUGINFOD_MAXSIZE)",
                    self.max_size
                ));
            }
            file.write_all(bytes)
                .map_err(|e| format!("cannot write the cache: {e}"))
        };
        put(&buf[head_end..], &mut total)?;
        drop(buf);
        while head.length.map_or(true, |l| total < l) {
            let n = self.read(&mut s, &mut piece)?;
            if n == 0 {
                break;
            }
            put(&piece[..n], &mut total)?;
        }
        if let Some(l) = head.length {
            if total != l {
                return Err(format!("connection closed after {total} of {l} bytes"));
            }
        }
        drop(file);
        if build_id_of(&tmp.path).as_deref() != Some(self.build_id.as_slice()) {
            return Err("the server sent a file of another build-id".into());
        }
        let dest = self.dir.join("debuginfo");
        tmp.rename(&dest)?;
        Ok(dest)
    }

    fn read(&self, s: &mut TcpStream, buf: &mut [u8]) -> Result<usize, String> {
        s.set_read_timeout(Some(self.left()?))
            .map_err(|e| e.to_string())?;
        loop {
            match s.read(buf) {
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    return Err("timed out (the dump's budget)".into())
                }
                Err(e) => return Err(format!("read failed: {e}")),
            }
        }
    }
}

fn build_id_of(path: &Path) -> Option<Vec<u8>> {
    let f = File::open(path).ok()?;
    let m = crate::mapped::MappedFile::map(&f).ok()?;
    let obj = object::File::parse(m.bytes()).ok()?;
    obj.build_id().ok()?.map(|b| b.to_vec())
}

/// A temporary file in the cache, removed unless renamed into place.
struct Temp {
    path: PathBuf,
    done: bool,
}

impl Temp {
    fn create(dir: &Path) -> Result<Temp, String> {
        static N: AtomicU64 = AtomicU64::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let path = dir.join(format!(".debuginfo.{}.{n}.tmp", std::process::id()));
        File::options()
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| format!("cannot create {}: {e}", path.display()))?;
        Ok(Temp { path, done: false })
    }

    fn file(&self) -> Result<File, String> {
        File::options()
            .write(true)
            .open(&self.path)
            .map_err(|e| format!("cannot open {}: {e}", self.path.display()))
    }

    fn rename(mut self, dest: &Path) -> Result<(), String> {
        std::fs::rename(&self.path, dest)
            .map_err(|e| format!("cannot rename into {}: {e}", dest.display()))?;
        self.done = true;
        Ok(())
    }
}

impl Drop for Temp {
    fn drop(&mut self) {
        if !self.done {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// An `http://` URL, split.
#[derive(Debug, PartialEq, Eq)]
struct Url {
    /// `host[:port]` as written (the `Host:` header).
    authority: String,
    host: String,
    port: u16,
    /// The path before `/buildid/…`, possibly empty.
    prefix: String,
}

impl Url {
    fn parse(url: &str) -> Result<Url, String> {
        let rest = match url.split_once("://") {
            Some((scheme, rest)) if scheme.eq_ignore_ascii_case("http") => rest,
            Some((scheme, _)) if scheme.eq_ignore_ascii_case("https") => {
                return Err("https is not supported (plain HTTP only)".into())
            }
            _ => return Err("not an http:// URL".into()),
        };
        let (authority, prefix) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        if authority.contains('@') {
            return Err("credentials in the URL are not supported".into());
        }
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (h, after) = v6.split_once(']').ok_or("bad IPv6 address")?;
            let port = match after.strip_prefix(':') {
                Some(p) => p.parse().map_err(|_| "bad port")?,
                None if after.is_empty() => 80,
                None => return Err("bad authority".into()),
            };
            (h.to_string(), port)
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h.to_string(), p.parse().map_err(|_| "bad port")?),
                None => (authority.to_string(), 80),
            }
        };
        if host.is_empty() {
            return Err("no host".into());
        }
        Ok(Url {
            authority: authority.to_string(),
            host,
            port,
            prefix: prefix.to_string(),
        })
    }
}

/// What the response head says.
#[derive(Debug, PartialEq, Eq)]
struct Head {
    status: u16,
    reason: String,
    length: Option<u64>,
    chunked: bool,
}

fn parse_head(head: &[u8]) -> Result<Head, String> {
    let text = std::str::from_utf8(head).map_err(|_| "response head is not text")?;
    let mut lines = text.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or("");
    if !version.starts_with("HTTP/1.") {
        return Err(format!("not an HTTP/1 response: {:.60}", status_line));
    }
    let status = parts
        .next()
        .and_then(|c| c.parse::<u16>().ok())
        .ok_or_else(|| format!("bad status line: {:.60}", status_line))?;
    let reason = parts.next().unwrap_or("").to_string();
    let mut length = None;
    let mut chunked = false;
    for line in lines {
        let Some((k, v)) = line.split_once(':') else {
            continue;
        };
        let (k, v) = (k.trim(), v.trim());
        if k.eq_ignore_ascii_case("content-length") {
            length = Some(v.parse::<u64>().map_err(|_| "bad Content-Length")?);
        } else if k.eq_ignore_ascii_case("transfer-encoding") {
            chunked = v.to_ascii_lowercase().contains("chunked");
        }
    }
    Ok(Head {
        status,
        reason,
        length,
        chunked,
    })
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    #[test]
    fn urls() {
        assert_eq!(
            parse_urls("  http://a:1/x \n https://b "),
            vec!["http://a:1/x".to_string(), "https://b".to_string()]
        );
        assert_eq!(
            Url::parse("http://127.0.0.1:8002").unwrap(),
            Url {
                authority: "127.0.0.1:8002".into(),
                host: "127.0.0.1".into(),
                port: 8002,
                prefix: String::new()
            }
        );
        let u = Url::parse("HTTP://debuginfod.example/pre/").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.prefix.as_str()),
            ("debuginfod.example", 80, "/pre/")
        );
        let u = Url::parse("http://[::1]:9/").unwrap();
        assert_eq!((u.host.as_str(), u.port), ("::1", 9));
        assert!(Url::parse("https://debuginfod.debian.net")
            .unwrap_err()
            .contains("https is not supported"));
        assert!(Url::parse("file:///x").is_err());
        assert!(Url::parse("http://h:99999").is_err());
        assert!(Url::parse("http://u:p@h").is_err());
        assert!(Url::parse("http://").is_err());
    }

    #[test]
    fn heads() {
        let h = parse_head(b"HTTP/1.1 200 OK\r\nContent-Length: 12\r\nX-A: b\r\n\r\n").unwrap();
        assert_eq!(
            h,
            Head {
                status: 200,
                reason: "OK".into(),
                length: Some(12),
                chunked: false
            }
        );
        let h =
            parse_head(b"HTTP/1.0 404 Not Found\r\ntransfer-encoding: Chunked\r\n\r\n").unwrap();
        assert_eq!((h.status, h.length, h.chunked), (404, None, true));
        assert!(parse_head(b"SSH-2.0-x\r\n\r\n").is_err());
        assert!(parse_head(b"HTTP/1.1 abc\r\n\r\n").is_err());
        assert!(parse_head(b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n").is_err());
        assert!(parse_head(b"HTTP/1.1 200 \xff\r\n\r\n").is_err());
    }

    #[test]
    fn find_head_end() {
        assert_eq!(find(b"ab\r\n\r\ncd", b"\r\n\r\n"), Some(2));
        assert_eq!(find(b"ab\r\n", b"\r\n\r\n"), None);
    }

    /// A one-shot server on 127.0.0.1 answering every connection with
    /// `response` (the bytes a misbehaving server would send), then closing.
    fn canned(response: Vec<u8>) -> (String, std::thread::JoinHandle<()>) {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", l.local_addr().unwrap());
        let t = std::thread::spawn(move || {
            if let Ok((mut c, _)) = l.accept() {
                let mut req = [0u8; 4096];
                let _ = c.read(&mut req);
                let _ = c.write_all(&response);
            }
        });
        (url, t)
    }

    fn client(url: String, tag: &str, max: u64) -> (Debuginfod, PathBuf) {
        let dir = std::env::temp_dir().join(format!("aiodebug-dbgd-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let c = Debuginfod::new(vec![url], dir.clone(), Duration::from_secs(10), max);
        c.begin();
        (c, dir)
    }

    /// Files left in the cache entry of `id` (no temporary may remain).
    fn left_in(dir: &Path, id: &[u8]) -> Vec<String> {
        std::fs::read_dir(dir.join(hex(id)))
            .map(|r| {
                r.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Refused before anything is written: larger than the cap by its
    /// Content-Length.
    #[test]
    fn too_large_by_its_length() {
        let (url, t) = canned(b"HTTP/1.1 200 OK\r\nContent-Length: 5000\r\n\r\nxx".to_vec());
        let (c, dir) = client(url, "len", 1000);
        let e = c.fetch(&[1; 20]).unwrap_err();
        assert!(e.contains("more than the limit of 1000"), "{e}");
        assert!(left_in(&dir, &[1; 20]).is_empty());
        t.join().unwrap();
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Without a length, the body is cut at the cap and the temporary
    /// file removed.
    #[test]
    fn too_large_while_streaming() {
        let mut r = b"HTTP/1.0 200 OK\r\n\r\n".to_vec();
        r.extend(vec![b'z'; 300_000]);
        let (url, t) = canned(r);
        let (c, dir) = client(url, "stream", 100_000);
        let e = c.fetch(&[2; 20]).unwrap_err();
        assert!(e.contains("more than the limit of 100000 bytes"), "{e}");
        assert!(left_in(&dir, &[2; 20]).is_empty());
        t.join().unwrap();
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A body shorter than its Content-Length, and a complete body that is
    /// not an ELF file of this build-id: neither enters the cache.
    #[test]
    fn short_or_foreign_bodies_are_not_cached() {
        let (url, t) = canned(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789".to_vec());
        let (c, dir) = client(url, "short", 1 << 20);
        let e = c.fetch(&[3; 20]).unwrap_err();
        assert!(e.contains("closed after 10 of 100 bytes"), "{e}");
        assert!(left_in(&dir, &[3; 20]).is_empty());
        t.join().unwrap();
        let _ = std::fs::remove_dir_all(&dir);

        let (url, t) = canned(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\n\x7fELF".to_vec());
        let (c, dir) = client(url, "foreign", 1 << 20);
        let e = c.fetch(&[4; 20]).unwrap_err();
        assert!(e.contains("another build-id"), "{e}");
        assert!(left_in(&dir, &[4; 20]).is_empty());
        assert!(!c.cached_path(&[4; 20]).exists());
        t.join().unwrap();
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A refused connection is an error naming the URL, at once; an
    /// exhausted budget stops the next fetch before it starts.
    #[test]
    fn server_down_and_spent_budget() {
        // A port nobody listens on: bind, read the port, close.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dir = std::env::temp_dir().join(format!("aiodebug-dbgd-unit-{}", std::process::id()));
        let url = format!("http://127.0.0.1:{port}");
        let c = Debuginfod::new(
            vec![url.clone()],
            dir.clone(),
            Duration::from_secs(5),
            1 << 20,
        );
        c.begin();
        let e = c.fetch(&[0xab; 20]).unwrap_err();
        assert!(e.contains(&url) && e.contains("cannot connect"), "{e}");
        let spent = Debuginfod::new(vec![url], dir.clone(), Duration::ZERO, 1 << 20);
        spent.begin();
        let e = spent.fetch(&[0xab; 20]).unwrap_err();
        assert!(e.contains("budget"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
