//! A process made of byte literals, for the tests of [`super::collect`] and
//! [`super::capture`].

use std::collections::HashMap;

use super::collect::Source;
use super::syscalls::{self, Call};

/// A process made of byte literals.
#[derive(Default)]
pub(crate) struct Fake {
    pub(crate) proc: HashMap<String, Vec<u8>>,
    pub(crate) links: HashMap<String, Vec<u8>>,
    pub(crate) files: HashMap<String, Vec<u8>>,
    pub(crate) memory: Vec<(u64, Vec<u8>)>,
    pub(crate) now: u64,
}

impl Source for Fake {
    fn proc_file(&self, rel: &str) -> Option<Vec<u8>> {
        self.proc.get(rel).cloned()
    }
    fn proc_link(&self, rel: &str) -> Option<Vec<u8>> {
        self.links.get(rel).cloned()
    }
    fn file(&self, path: &str) -> Option<Vec<u8>> {
        self.files.get(path).cloned()
    }
    fn read_memory(&self, addr: u64, buf: &mut [u8]) -> usize {
        for (start, bytes) in &self.memory {
            if addr >= *start && addr < start + bytes.len() as u64 {
                let off = (addr - start) as usize;
                let n = buf.len().min(bytes.len() - off);
                buf[..n].copy_from_slice(&bytes[off..off + n]);
                return n;
            }
        }
        0
    }
    fn proc_dir(&self, rel: &str) -> Vec<String> {
        let prefix = format!("{rel}/");
        let mut names: Vec<String> = self
            .proc
            .keys()
            .filter_map(|k| k.strip_prefix(&prefix)?.split('/').next())
            .map(str::to_string)
            .collect();
        names.sort();
        names.dedup();
        names
    }
    fn now_ns(&self) -> u64 {
        self.now
    }
    fn boottime_ns(&self) -> Option<u64> {
        None
    }
}

pub(crate) fn call(name: &'static str, args: [u64; 6]) -> Call {
    Call {
        nr: syscalls::number(syscalls::Arch::X86_64, name).unwrap(),
        name: Some(name),
        args,
        blocked: true,
        resumed: false,
    }
}
