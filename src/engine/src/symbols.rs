//! The target's modules (ELF files and the vDSO) and symbolization:
//! addresses to demangled function names, inlined frames and file:line.
//!
//! - Files are opened through `/proc/PID/root/<path>` (containers), falling
//!   back to `/proc/PID/map_files/<range>` (replaced or deleted binaries).
//!   We never enter the target's namespaces.
//! - Separate debug info is found by build-id
//!   (`/usr/lib/debug/.build-id/xx/yyyy.debug`, on the host then in the
//!   target's root) and by `.gnu_debuglink` (next to the file, in `.debug/`,
//!   under `/usr/lib/debug`; in a `--debug-dir` also flat, `DIR/<link>`),
//!   CRC-checked; `.gnu_debugaltlink` (dwz) is followed. Found nowhere, it is
//!   fetched by build-id from debuginfod when the source has a client
//!   ([`crate::debuginfod`]).
//! - Names come from DWARF (with inlined frames) and else from `.symtab` /
//!   `.dynsym`; where nothing is known the caller prints `module+0xoffset`.
//! - Everything is cached per module file and reused across snapshots by one
//!   [`Symbolizer`]. Unreadable or hostile files give unknown frames, never
//!   a panic (parsers run under `catch_unwind` as a last line of defence).

use std::cell::OnceCell;
use std::collections::HashMap;
use std::fs::File;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;

use object::{Object, ObjectSection, ObjectSymbol, SymbolKind};

use crate::mapped::{DwarfContext, MappedFile, SourceFrame};
use crate::module::{under_root, DebugSource, Module, ModuleCache, ModuleId, Modules, TargetFiles};
use crate::proc::MapEntry;

/// Most symbols kept per module.
const MAX_SYMBOLS: usize = 4 << 20;
/// Most inlined frames reported at one address.
const MAX_INLINED: usize = 256;
/// Most cached symbolized addresses before the cache is cleared.
const MAX_CACHED_ADDRESSES: usize = 1 << 20;
/// Directory of separate debug files on the host (and in the target's root).
const DEBUG_DIR: &str = "/usr/lib/debug";

// ---------------------------------------------------------------------------
// section bytes for the unwinder

/// A byte range of a module file, shared (the unwinder's section data).
#[derive(Debug, Clone)]
pub struct SectionBytes {
    file: Arc<MappedFile>,
    range: Range<usize>,
}

impl Default for SectionBytes {
    fn default() -> Self {
        SectionBytes {
            file: Arc::new(MappedFile::owned(Vec::new())),
            range: 0..0,
        }
    }
}

impl std::ops::Deref for SectionBytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.file.bytes().get(self.range.clone()).unwrap_or(&[])
    }
}

/// A section of a module: where it is in the file's address space and its bytes.
#[derive(Debug, Clone)]
pub struct Section {
    /// Addresses as stated in the ELF file.
    pub svma: Range<u64>,
    /// The bytes.
    pub data: SectionBytes,
}

// ---------------------------------------------------------------------------
// ELF images

#[derive(Debug, Clone)]
struct Symbol {
    address: u64,
    size: u64,
    name: String,
}

#[derive(Debug, Default)]
struct SymbolData {
    dwarf: Option<DwarfContext>,
    /// The separate debug file, mapped.
    debug: Option<Arc<MappedFile>>,
    /// ELF symbols, read on first need (DWARF usually names every frame).
    symbols: OnceCell<Vec<Symbol>>,
    debug_file: Option<PathBuf>,
    /// Why there is no DWARF, if so.
    note: Option<DebugNote>,
}

/// Why a module has no debug info (no file:line), found when its symbols
/// were loaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DebugNote {
    /// The sentence, naming the module and its build-id.
    pub text: String,
    /// debuginfod was asked and did not deliver (the user asked for it: the
    /// dump says so even when the frames have names).
    pub fetch_failed: bool,
}

/// One ELF file (or vDSO image) of a target, parsed once.
#[derive(Debug)]
pub struct ElfImage {
    /// The module's name: its path as the target sees it, or `[vdso]`.
    pub name: String,
    file: Arc<MappedFile>,
    /// `.text` (addresses as stated in the file).
    pub text_svma: Option<Range<u64>>,
    /// `.got`.
    pub got_svma: Option<Range<u64>>,
    /// `.eh_frame`.
    pub eh_frame: Option<Section>,
    /// `.eh_frame_hdr`.
    pub eh_frame_hdr: Option<Section>,
    /// `.debug_frame` of the file itself.
    pub debug_frame: Option<Section>,
    build_id: Option<Vec<u8>>,
    debuglink: Option<(Vec<u8>, u32)>,
    altlink: Option<(Vec<u8>, Vec<u8>)>,
    /// Where to look for debug files, and the file's path in the target.
    paths: DebugPaths,
    target_path: Option<PathBuf>,
    symbols: OnceCell<SymbolData>,
}

fn section_of(obj: &object::File<'_>, file: &Arc<MappedFile>, names: &[&str]) -> Option<Section> {
    let s = names.iter().find_map(|n| obj.section_by_name(n))?;
    let (off, size) = s.file_range()?;
    let start = usize::try_from(off).ok()?;
    let end = start.checked_add(usize::try_from(size).ok()?)?;
    if end > file.bytes().len() || size == 0 {
        return None;
    }
    Some(Section {
        svma: s.address()..s.address().checked_add(s.size())?,
        data: SectionBytes {
            file: file.clone(),
            range: start..end,
        },
    })
}

fn svma_of(obj: &object::File<'_>, name: &str) -> Option<Range<u64>> {
    let s = obj.section_by_name(name)?;
    Some(s.address()..s.address().checked_add(s.size())?)
}

/// Where an [`ElfImage`] looks for its separate debug files (from a
/// [`DebugSource`], kept with the image: it loads them on first need).
#[derive(Debug, Clone, Default)]
pub struct DebugPaths {
    /// Roots holding `usr/lib/debug` and the module's own directory, in order.
    pub roots: Vec<PathBuf>,
    /// Directories laid out as `/usr/lib/debug`.
    pub debug_dirs: Vec<PathBuf>,
    /// Keeps the roots' paths valid (an open directory).
    pub keep: Option<Arc<File>>,
    /// Asked for what none of the directories has.
    pub debuginfod: Option<Arc<crate::debuginfod::Debuginfod>>,
}

impl DebugPaths {
    /// The host's own files only.
    pub fn host() -> DebugPaths {
        DebugPaths {
            roots: vec![PathBuf::from("/")],
            ..DebugPaths::default()
        }
    }

    /// What `source` says.
    pub fn of(source: &dyn DebugSource) -> DebugPaths {
        DebugPaths {
            roots: source.roots(),
            debug_dirs: source.debug_dirs(),
            keep: source.keep_alive(),
            debuginfod: source.debuginfod(),
        }
    }

    /// `ROOT/usr/lib/debug` of every root, then the debug directories.
    fn debug_roots(&self) -> Vec<PathBuf> {
        let mut out: Vec<PathBuf> = self
            .roots
            .iter()
            .map(|r| r.join(DEBUG_DIR.trim_start_matches('/')))
            .collect();
        out.extend(self.debug_dirs.iter().cloned());
        out
    }
}

impl ElfImage {
    /// Parses `file`. `Err` names why the file cannot be used.
    pub fn parse(
        name: String,
        file: Arc<MappedFile>,
        paths: DebugPaths,
        target_path: Option<PathBuf>,
    ) -> Result<ElfImage, String> {
        guard(|| Self::parse_inner(name, file, paths, target_path))
            .unwrap_or_else(|| Err("parser panicked on this file".to_string()))
    }

    fn parse_inner(
        name: String,
        file: Arc<MappedFile>,
        paths: DebugPaths,
        target_path: Option<PathBuf>,
    ) -> Result<ElfImage, String> {
        let obj = object::File::parse(file.bytes()).map_err(|e| e.to_string())?;
        if obj.format() != object::BinaryFormat::Elf {
            return Err("not an ELF file".to_string());
        }
        let text_svma = svma_of(&obj, ".text");
        let got_svma = svma_of(&obj, ".got");
        let eh_frame = section_of(&obj, &file, &[".eh_frame"]);
        let eh_frame_hdr = section_of(&obj, &file, &[".eh_frame_hdr"]);
        let debug_frame = section_of(&obj, &file, &[".debug_frame"]);
        let build_id = obj.build_id().ok().flatten().map(|b| b.to_vec());
        let debuglink = obj
            .gnu_debuglink()
            .ok()
            .flatten()
            .map(|(n, crc)| (n.to_vec(), crc));
        let altlink = obj
            .gnu_debugaltlink()
            .ok()
            .flatten()
            .map(|(n, id)| (n.to_vec(), id.to_vec()));
        drop(obj);
        Ok(ElfImage {
            name,
            file,
            text_svma,
            got_svma,
            eh_frame,
            eh_frame_hdr,
            debug_frame,
            build_id,
            debuglink,
            altlink,
            paths,
            target_path,
            symbols: OnceCell::new(),
        })
    }

    /// The bytes at file offset `off`, if in the file.
    pub fn file_bytes(&self, off: u64, len: usize) -> Option<&[u8]> {
        let start = usize::try_from(off).ok()?;
        self.file.bytes().get(start..start.checked_add(len)?)
    }

    /// `.debug_frame` from the separate debug file (only looked for when the
    /// file itself has neither `.eh_frame` nor `.debug_frame`).
    pub fn separate_debug_frame(&self) -> Option<Section> {
        let path = self.find_debug_file()?;
        let f = File::open(&path).ok()?;
        let mapped = Arc::new(MappedFile::map(&f).ok()?);
        let obj = object::File::parse(mapped.bytes()).ok()?;
        section_of(&obj, &mapped, &[".debug_frame"])
    }

    fn symbol_data(&self) -> &SymbolData {
        self.symbols
            .get_or_init(|| guard(|| self.load_symbols()).unwrap_or_default())
    }

    fn load_symbols(&self) -> SymbolData {
        let mut data = self.load_with(self.find_debug_file());
        if data.dwarf.is_some() || self.name == "[vdso]" {
            return data;
        }
        let id = match &self.build_id {
            Some(id) => format!("build-id {}", hex(id)),
            None => "no build-id".to_string(),
        };
        let fetched = match (&self.paths.debuginfod, &self.build_id) {
            (Some(client), Some(build_id)) => Some(client.fetch(build_id)),
            _ => None,
        };
        let text = match fetched {
            Some(Ok(path)) => {
                let with = self.load_with(Some(path.clone()));
                if with.dwarf.is_some() {
                    return with;
                }
                format!(
                    "{}: no debug info ({id}): debuginfod's {} has none",
                    self.name,
                    path.display()
                )
            }
            Some(Err(e)) => {
                data.note = Some(DebugNote {
                    text: format!(
                        "{}: no debug info ({id}): debuginfod did not deliver it: {e}",
                        self.name
                    ),
                    fetch_failed: true,
                });
                return data;
            }
            None => format!(
                "{}: no debug info ({id}): none in the file, none by build-id or debug link under \
                 /usr/lib/debug{}; {}",
                self.name,
                if self.paths.debug_dirs.is_empty() {
                    " (no --debug-dir given)".to_string()
                } else {
                    format!(" or {} --debug-dir", self.paths.debug_dirs.len())
                },
                if self.build_id.is_none() {
                    "debuginfod needs a build-id"
                } else if self.paths.debuginfod.is_none() {
                    "DEBUGINFOD_URLS is not set"
                } else {
                    "debuginfod was not asked"
                }
            ),
        };
        data.note = Some(DebugNote {
            text,
            fetch_failed: false,
        });
        data
    }

    /// Symbols and DWARF with `debug_path` as the separate debug file.
    fn load_with(&self, debug_path: Option<PathBuf>) -> SymbolData {
        let debug = debug_path
            .as_ref()
            .and_then(|p| File::open(p).ok())
            .and_then(|f| MappedFile::map(&f).ok())
            .map(Arc::new);
        // DWARF: the separate file first, else the module itself.
        let sup = debug
            .as_ref()
            .and_then(|d| self.find_altlink(d))
            .or_else(|| self.find_altlink(&self.file));
        let dwarf = debug
            .as_ref()
            .and_then(|d| DwarfContext::load(d, sup.as_ref()))
            .or_else(|| DwarfContext::load(&self.file, sup.as_ref()));
        SymbolData {
            dwarf,
            debug_file: debug.as_ref().map(|_| debug_path.unwrap_or_default()),
            debug,
            symbols: OnceCell::new(),
            note: None,
        }
    }

    /// Why this module has no debug info, if its symbols were loaded and it
    /// has none (never loads them).
    pub fn debug_note(&self) -> Option<&DebugNote> {
        self.symbols.get()?.note.as_ref()
    }

    /// Symbols: `.symtab` of the debug file, else of the file, else `.dynsym`.
    fn elf_symbols<'a>(&self, data: &'a SymbolData) -> &'a [Symbol] {
        data.symbols.get_or_init(|| {
            let mut symbols = data
                .debug
                .as_ref()
                .map(|d| read_symbols(d.bytes(), false))
                .unwrap_or_default();
            if symbols.is_empty() {
                symbols = read_symbols(self.file.bytes(), false);
            }
            if symbols.is_empty() {
                symbols = read_symbols(self.file.bytes(), true);
            }
            symbols
        })
    }

    fn find_altlink(&self, file: &Arc<MappedFile>) -> Option<Arc<MappedFile>> {
        // Only meaningful for the file that carries the link.
        let (name, id) = if Arc::ptr_eq(file, &self.file) {
            self.altlink.clone()?
        } else {
            let obj = object::File::parse(file.bytes()).ok()?;
            let (n, i) = obj.gnu_debugaltlink().ok()??;
            (n.to_vec(), i.to_vec())
        };
        let name = String::from_utf8_lossy(&name).into_owned();
        let mut candidates: Vec<PathBuf> = Vec::new();
        if name.starts_with('/') {
            for root in &self.paths.roots {
                candidates.push(under_root(root, Path::new(&name)));
            }
        }
        for dir in self.paths.debug_roots() {
            candidates.extend(build_id_path(&dir, &id));
        }
        for c in candidates {
            if let Some(m) = open_matching(&c, Some(&id)) {
                return Some(m);
            }
        }
        None
    }

    /// The separate debug file, if one is installed.
    fn find_debug_file(&self) -> Option<PathBuf> {
        if let Some(id) = &self.build_id {
            for dir in self.paths.debug_roots() {
                if let Some(p) = build_id_path(&dir, id) {
                    if let Ok(f) = File::open(&p) {
                        if build_id_of_file(&f).as_deref() == Some(id.as_slice()) {
                            return Some(p);
                        }
                    }
                }
            }
        }
        let (link, crc) = self.debuglink.as_ref()?;
        let link = Path::new(std::str::from_utf8(link).ok()?);
        if link.components().count() != 1 {
            return None;
        }
        let dir = self.target_path.as_ref()?.parent()?.to_path_buf();
        let rel_dir = dir.strip_prefix("/").unwrap_or(&dir).to_path_buf();
        let mut candidates = Vec::new();
        // The target's own root first (the module's directory is its).
        for root in self.paths.roots.iter().rev() {
            candidates.push(root.join(&rel_dir).join(link));
            candidates.push(root.join(&rel_dir).join(".debug").join(link));
        }
        for dir in self.paths.debug_roots() {
            candidates.push(dir.join(&rel_dir).join(link));
        }
        // A --debug-dir may also hold debug files side by side, by link name.
        for dir in &self.paths.debug_dirs {
            candidates.push(dir.join(link));
        }
        let own: Vec<PathBuf> = match &self.target_path {
            Some(tp) => self.paths.roots.iter().map(|r| under_root(r, tp)).collect(),
            None => Vec::new(),
        };
        for c in candidates {
            // Never the module itself.
            if own.contains(&c) {
                continue;
            }
            let Ok(f) = File::open(&c) else { continue };
            let Ok(m) = MappedFile::map(&f) else { continue };
            if crc32(m.bytes()) == *crc {
                return Some(c);
            }
        }
        None
    }

    /// Symbolizes `probe` (an address as stated in the file): innermost
    /// (inlined) function first. Empty when nothing is known.
    pub fn lookup(&self, probe: u64) -> Vec<SourceFrame> {
        guard(|| self.lookup_inner(probe)).unwrap_or_default()
    }

    fn lookup_inner(&self, probe: u64) -> Vec<SourceFrame> {
        // addr2line computes `probe + 1`.
        if probe == u64::MAX {
            return Vec::new();
        }
        let data = self.symbol_data();
        let mut frames = data
            .dwarf
            .as_ref()
            .map(|d| d.frames(probe, MAX_INLINED))
            .unwrap_or_default();
        let needs_name = match frames.last() {
            Some(f) => f.function.as_deref().map_or(true, |n| !is_qualified(n)),
            None => true,
        };
        let symbol = needs_name
            .then(|| symbol_for(self.elf_symbols(data), probe))
            .flatten()
            .map(|name| addr2line::demangle_auto(name.into(), None).into_owned());
        qualify_frames(&mut frames, symbol.as_deref());
        if let Some(name) = symbol {
            match frames.last_mut() {
                // A name with its path replaces one without (C names have
                // none either way and keep DWARF's).
                Some(f) => match f.function.as_deref() {
                    None => f.function = Some(name),
                    Some(n) if !is_qualified(n) && is_qualified(&name) => f.function = Some(name),
                    Some(_) => {}
                },
                None => frames.push(SourceFrame {
                    function: Some(name),
                    file: None,
                    line: None,
                }),
            }
        }
        frames
    }

    /// The separate debug file used for this module, if any was found (loads
    /// symbols if not done yet).
    pub fn debug_file(&self) -> Option<&Path> {
        self.symbol_data().debug_file.as_deref()
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `DIR/.build-id/xx/yyyy.debug` of a debug directory (`/usr/lib/debug`).
pub(crate) fn build_id_path(debug_dir: &Path, id: &[u8]) -> Option<PathBuf> {
    if id.len() < 2 || id.len() > 64 {
        return None;
    }
    let h = hex(id);
    Some(
        debug_dir
            .join(".build-id")
            .join(h.get(..2)?)
            .join(format!("{}.debug", h.get(2..)?)),
    )
}

pub(crate) fn build_id_of_file(f: &File) -> Option<Vec<u8>> {
    let m = MappedFile::map(f).ok()?;
    let obj = object::File::parse(m.bytes()).ok()?;
    obj.build_id().ok()?.map(|b| b.to_vec())
}

fn open_matching(path: &Path, id: Option<&[u8]>) -> Option<Arc<MappedFile>> {
    let f = File::open(path).ok()?;
    if let Some(id) = id {
        if build_id_of_file(&f).as_deref() != Some(id) {
            return None;
        }
    }
    MappedFile::map(&f).ok().map(Arc::new)
}

/// Function symbols of an ELF file, sorted by address; at one address the
/// most readable name wins (fewest leading underscores, then shortest).
fn read_symbols(data: &[u8], dynamic: bool) -> Vec<Symbol> {
    let Ok(obj) = object::File::parse(data) else {
        return Vec::new();
    };
    let mut out: Vec<Symbol> = Vec::new();
    let iter = if dynamic {
        obj.dynamic_symbols()
    } else {
        obj.symbols()
    };
    for sym in iter {
        if out.len() >= MAX_SYMBOLS {
            break;
        }
        if sym.kind() != SymbolKind::Text || sym.is_undefined() || sym.address() == 0 {
            continue;
        }
        let Ok(name) = sym.name() else { continue };
        if name.is_empty() {
            continue;
        }
        out.push(Symbol {
            address: sym.address(),
            size: sym.size(),
            name: name.to_string(),
        });
    }
    fn rank(s: &Symbol) -> (usize, usize) {
        let underscores = s.name.bytes().take_while(|&b| b == b'_').count();
        (underscores, s.name.len())
    }
    out.sort_by(|a, b| {
        a.address
            .cmp(&b.address)
            .then_with(|| rank(a).cmp(&rank(b)))
    });
    out.dedup_by_key(|s| s.address);
    out
}

/// Whether a function name carries its path (`a::b`, `<T as Tr>::f`) rather
/// than only its own name, as DWARF with line tables only gives it
/// (`run_task`, `poll<T>`, `{async_fn#0}`).
fn is_qualified(name: &str) -> bool {
    let head = name.split('<').next().unwrap_or(name);
    head.contains("::") || name.starts_with('<')
}

/// The marker of an anonymous function's body (`{async_fn#0}`,
/// `{closure#1}`, `{async_block#0}`) and the marker of its state type
/// (`{async_fn_env#0}`), for a name that is only that (plus generics).
fn anonymous_marker(name: &str) -> Option<(&str, String)> {
    let end = name.find('}')? + 1;
    let marker = name.get(..end)?;
    let inner = marker.strip_prefix('{')?.strip_suffix('}')?;
    let (kind, n) = inner.split_once('#')?;
    if !matches!(kind, "async_fn" | "closure" | "async_block" | "coroutine")
        || n.is_empty()
        || !n.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    let rest = name.get(end..)?;
    if !(rest.is_empty() || rest.starts_with('<')) {
        return None;
    }
    Some((marker, format!("::{{{kind}_env#{n}}}")))
}

/// The path in front of `env` (`shop::orders::handler` of
/// `fn(..) -> shop::orders::handler::{async_fn_env#0}`) in `text`.
fn path_before(text: &str, env: &str) -> Option<String> {
    let at = text.find(env)?;
    let before = text.get(..at)?;
    let start = before
        .rfind(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
        .map_or(0, |i| i + 1);
    let path = before.get(start..)?.trim_start_matches(':');
    (!path.is_empty()).then(|| path.to_string())
}

/// Names anonymous frames (`{async_fn#0}`: an async fn's body, inlined into
/// the framework that polls it) by the function they belong to, which DWARF
/// with line tables only does not say: the callers' names (frames further
/// out at the same address, and the symbol of the function that contains
/// the address) usually carry the body's state type among their generic
/// arguments, `shop::orders::handler::{async_fn_env#0}`, whose path is the
/// function's. An anonymous frame whose path cannot be found keeps its name.
pub fn qualify_frames(frames: &mut [SourceFrame], symbol: Option<&str>) {
    for i in 0..frames.len() {
        let Some(name) = frames.get(i).and_then(|f| f.function.clone()) else {
            continue;
        };
        let Some((_, env)) = anonymous_marker(&name) else {
            continue;
        };
        let outer = frames
            .iter()
            .skip(i + 1)
            .filter_map(|f| f.function.as_deref())
            .chain(symbol);
        let Some(path) = outer.into_iter().find_map(|t| path_before(t, &env)) else {
            continue;
        };
        if let Some(f) = frames.get_mut(i) {
            f.function = Some(format!("{path}::{name}"));
        }
    }
}

fn symbol_for(symbols: &[Symbol], probe: u64) -> Option<&str> {
    let i = symbols.partition_point(|s| s.address <= probe);
    let s = symbols.get(i.checked_sub(1)?)?;
    let within = if s.size > 0 {
        probe < s.address.saturating_add(s.size)
    } else {
        // Unsized (assembly) symbol: accept up to the next symbol, within 64 KiB.
        probe - s.address < 0x1_0000
    };
    within.then_some(s.name.as_str())
}

/// CRC-32 (IEEE) as used by `.gnu_debuglink`.
pub fn crc32(data: &[u8]) -> u32 {
    static TABLE: std::sync::OnceLock<[u32; 256]> = std::sync::OnceLock::new();
    let table = TABLE.get_or_init(|| {
        let mut t = [0u32; 256];
        for (i, e) in t.iter_mut().enumerate() {
            let mut c = i as u32;
            for _ in 0..8 {
                c = if c & 1 != 0 {
                    0xedb8_8320 ^ (c >> 1)
                } else {
                    c >> 1
                };
            }
            *e = c;
        }
        t
    });
    let mut crc = !0u32;
    for &b in data {
        crc = table[((crc ^ b as u32) & 0xff) as usize] ^ (crc >> 8);
    }
    !crc
}

/// Runs a parser on untrusted data; a panic becomes `None`.
fn guard<T>(f: impl FnOnce() -> T) -> Option<T> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).ok()
}

// ---------------------------------------------------------------------------
// a process's address space

/// A module mapped in a process.
#[derive(Debug, Clone)]
pub struct MappedModule {
    /// Path as the target sees it, or `[vdso]`.
    pub name: String,
    /// The parsed file; `None` if it could not be opened or parsed.
    pub image: Option<Rc<ElfImage>>,
    /// Why `image` is `None`.
    pub problem: Option<String>,
    /// First address of the module's mappings.
    pub start: u64,
    /// One past its last address.
    pub end: u64,
    /// Load bias: actual address − address stated in the file.
    pub bias: u64,
}

#[derive(Debug, Clone)]
struct CodeRange {
    start: u64,
    end: u64,
    offset: u64,
    module: Option<usize>,
}

/// The modules and executable mappings of one process at one snapshot.
#[derive(Debug, Clone, Default)]
pub struct AddressSpace {
    /// Modules sorted by start address.
    pub modules: Vec<MappedModule>,
    code: Vec<CodeRange>,
}

impl AddressSpace {
    /// The module containing `addr`.
    pub fn module_at(&self, addr: u64) -> Option<&MappedModule> {
        let i = self.modules.partition_point(|m| m.start <= addr);
        let m = self.modules.get(i.checked_sub(1)?)?;
        (addr < m.end).then_some(m)
    }

    fn code_at(&self, addr: u64) -> Option<&CodeRange> {
        let i = self.code.partition_point(|c| c.start <= addr);
        let c = self.code.get(i.checked_sub(1)?)?;
        (addr < c.end).then_some(c)
    }

    /// Whether `addr` lies in an executable mapping.
    pub fn is_code(&self, addr: u64) -> bool {
        self.code_at(addr).is_some()
    }

    /// `len` bytes of code at `addr`, read from the module's file (or image).
    pub fn code_bytes(&self, addr: u64, len: usize) -> Option<&[u8]> {
        let c = self.code_at(addr)?;
        let end = addr.checked_add(len as u64)?;
        if end > c.end {
            return None;
        }
        let image = self.modules.get(c.module?)?.image.as_ref()?;
        image.file_bytes(addr - c.start + c.offset, len)
    }
}

/// What one address symbolizes to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Symbolized {
    /// Functions at the address, innermost (inlined) first; empty when
    /// nothing is known.
    pub frames: Vec<SourceFrame>,
    /// The module, if the address is in one.
    pub module: Option<String>,
    /// Offset of the address from the module's load bias (the address as
    /// stated in the file), if in a module.
    pub module_offset: Option<u64>,
}

/// Opens and parses module files; caches every one by its identity
/// ([`ModuleId`]: build-id, else file identity; and its length, so that a
/// stripped and an unstripped file of one build are not taken for each
/// other) for reuse across snapshots (and processes).
#[derive(Debug, Default)]
pub struct Symbolizer {
    images: HashMap<(ModuleId, u64), Result<Rc<ElfImage>, String>>,
    /// (image identity, probe) → result.
    results: HashMap<(usize, u64), Arc<Vec<SourceFrame>>>,
}

impl Symbolizer {
    /// An empty symbolizer.
    pub fn new() -> Symbolizer {
        Symbolizer::default()
    }

    /// Number of module files parsed so far.
    pub fn cached_modules(&self) -> usize {
        self.images.len()
    }

    /// Captures the modules of the live process `pid` from its `maps` and
    /// opens them ([`crate::module::capture`], then [`Symbolizer::space`]).
    pub fn address_space(&mut self, pid: i32, maps: &[MapEntry]) -> AddressSpace {
        let mut sorted = maps.to_vec();
        sorted.sort_by_key(|m| m.start);
        let modules = crate::module::capture(pid, &sorted, &mut ModuleCache::new());
        self.space(&modules, &TargetFiles::open(pid))
    }

    /// The address space of captured `modules`: each module's file parsed
    /// (or reused), from the file captured with it or opened by `source`;
    /// reads nothing of the process itself.
    pub fn space(&mut self, modules: &Modules, source: &dyn DebugSource) -> AddressSpace {
        let mut space = AddressSpace::default();
        let mut sorted: Vec<&Module> = modules.modules.iter().collect();
        sorted.sort_by_key(|m| m.start);
        for m in sorted {
            let (image, problem) = match &m.problem {
                // Unusable (unreadable, not ELF): offsets from its mapping only.
                Some(p) => (None, Some(p.clone())),
                None => match self.image_of(m, source) {
                    Ok(i) => (Some(i), None),
                    Err(e) => (None, Some(e)),
                },
            };
            let idx = space.modules.len();
            space.modules.push(MappedModule {
                name: m.name.clone(),
                image,
                problem,
                start: m.start,
                end: m.end,
                bias: m.bias,
            });
            for c in &m.code {
                space.code.push(CodeRange {
                    start: c.start,
                    end: c.end,
                    offset: c.offset,
                    module: Some(idx),
                });
            }
        }
        space.code.sort_by_key(|c| c.start);
        space
    }

    fn image_of(&mut self, m: &Module, source: &dyn DebugSource) -> Result<Rc<ElfImage>, String> {
        let id = m.id.clone().ok_or("no identity")?;
        if let Some(bytes) = &m.image {
            let key = (id, bytes.len() as u64);
            return self
                .images
                .entry(key)
                .or_insert_with(|| {
                    ElfImage::parse(
                        m.name.clone(),
                        Arc::new(MappedFile::owned(bytes.as_ref().clone())),
                        DebugPaths::host(),
                        None,
                    )
                    .map(Rc::new)
                })
                .clone();
        }
        let opened;
        let file: &File = match &m.file {
            Some(f) => f,
            None => {
                opened = source
                    .open_module(m)
                    .map_err(|e| format!("cannot open: {e}"))?;
                &opened
            }
        };
        let len = file.metadata().map(|md| md.len()).unwrap_or(0);
        self.images
            .entry((id, len))
            .or_insert_with(|| {
                let mapped = MappedFile::map(file).map_err(|e| format!("cannot map: {e}"))?;
                ElfImage::parse(
                    m.name.clone(),
                    Arc::new(mapped),
                    DebugPaths::of(source),
                    m.path.clone(),
                )
                .map(Rc::new)
            })
            .clone()
    }

    /// Symbolizes `addr` of `space`. `is_return` marks a return address: the
    /// call instruction before it is looked up.
    pub fn symbolize(&mut self, space: &AddressSpace, addr: u64, is_return: bool) -> Symbolized {
        let Some(module) = space.module_at(addr) else {
            return Symbolized {
                frames: Vec::new(),
                module: None,
                module_offset: None,
            };
        };
        let svma = addr.wrapping_sub(module.bias);
        let mut out = Symbolized {
            frames: Vec::new(),
            module: Some(module.name.clone()),
            module_offset: Some(svma),
        };
        let Some(image) = &module.image else {
            return out;
        };
        let probe = if is_return {
            svma.wrapping_sub(1)
        } else {
            svma
        };
        let key = (Rc::as_ptr(image) as usize, probe);
        if let Some(hit) = self.results.get(&key) {
            out.frames = hit.as_ref().clone();
            return out;
        }
        let frames = Arc::new(image.lookup(probe));
        if self.results.len() >= MAX_CACHED_ADDRESSES {
            self.results.clear();
        }
        self.results.insert(key, frames.clone());
        out.frames = frames.as_ref().clone();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sf(name: &str) -> SourceFrame {
        SourceFrame {
            function: Some(name.into()),
            file: None,
            line: None,
        }
    }

    #[test]
    fn anonymous_frames_are_named_by_their_callers_generics() {
        let mut frames = vec![
            sf("sleep<u64>"),
            sf("{async_fn#0}"),
            sf("{async_block#0}<fn(axum::extract::path::Path<u64>) -> shop::orders::sleep_handler::{async_fn_env#0}, shop::orders::sleep_handler::{async_fn_env#0}, ()>"),
            sf("poll<alloc::boxed::Box<dyn core::future::future::Future>>"),
        ];
        qualify_frames(
            &mut frames,
            Some("<F as axum::handler::Handler<(M,T1),S>>::call::{{closure}}"),
        );
        assert_eq!(
            frames[1].function.as_deref(),
            Some("shop::orders::sleep_handler::{async_fn#0}")
        );
        // The axum block is named from the symbol (no env marker of its own
        // among the outer names): it stays as it was, to be replaced by the
        // symbol name when it is the outermost frame.
        assert!(frames[2]
            .function
            .as_deref()
            .is_some_and(|n| n.starts_with("{async_block#0}<")));
        assert_eq!(
            frames[0].function.as_deref(),
            Some("sleep<u64>"),
            "not anonymous"
        );
        // No caller names the state type: unchanged.
        let mut alone = vec![sf("{closure#2}"), sf("run")];
        qualify_frames(&mut alone, None);
        assert_eq!(alone[0].function.as_deref(), Some("{closure#2}"));
    }

    #[test]
    fn qualified_names_and_markers_are_told_apart() {
        assert!(is_qualified("tokio::runtime::task::raw::poll"));
        assert!(is_qualified(
            "<F as axum::handler::Handler<(M,T1),S>>::call"
        ));
        assert!(!is_qualified("run_task"));
        assert!(!is_qualified("poll<tokio::net::TcpStream>"));
        assert!(!is_qualified("{async_fn#0}"));
        assert_eq!(
            anonymous_marker("{closure#12}<u8>").map(|(m, e)| (m.to_string(), e)),
            Some(("{closure#12}".into(), "::{closure_env#12}".into()))
        );
        assert_eq!(anonymous_marker("{impl#0}"), None);
        assert_eq!(anonymous_marker("{async_fn#x}"), None);
        assert_eq!(anonymous_marker("{async_fn#0}tail"), None);
        assert_eq!(anonymous_marker("}{"), None);
        assert_eq!(path_before("no marker", "::{async_fn_env#0}"), None);
        assert_eq!(
            path_before("::{async_fn_env#0}", "::{async_fn_env#0}"),
            None
        );
    }

    #[test]
    fn a_garbage_module_gets_offsets_from_its_mapping() {
        use std::os::unix::fs::MetadataExt;
        let path =
            std::env::temp_dir().join(format!("aiodebug-garbage-module-{}.so", std::process::id()));
        std::fs::write(&path, b"not an ELF file at all, just bytes").expect("write");
        let inode = std::fs::metadata(&path).expect("meta").ino();
        let map = MapEntry {
            start: 0x7f00_0000_0000,
            end: 0x7f00_0000_2000,
            read: true,
            write: false,
            exec: true,
            shared: false,
            offset: 0x1000,
            dev: (0, 0),
            inode,
            path: crate::proc::MapPath::File {
                path: path.clone(),
                deleted: false,
            },
        };
        let mut sym = Symbolizer::new();
        let space = sym.address_space(std::process::id() as i32, std::slice::from_ref(&map));
        let _ = std::fs::remove_file(&path);
        let out = sym.symbolize(&space, 0x7f00_0000_012f, false);
        assert!(out.frames.is_empty());
        // File offset of the address: 0x12f into the mapping of offset 0x1000.
        assert_eq!(out.module_offset, Some(0x112f));
    }

    #[test]
    fn crc32_matches_the_reference() {
        assert_eq!(crc32(b"123456789"), 0xcbf4_3926);
        assert_eq!(crc32(b""), 0);
    }

    #[test]
    fn symbols_pick_the_containing_function() {
        let syms = vec![
            Symbol {
                address: 0x100,
                size: 0x10,
                name: "a".into(),
            },
            Symbol {
                address: 0x200,
                size: 0,
                name: "asm".into(),
            },
        ];
        assert_eq!(symbol_for(&syms, 0x100), Some("a"));
        assert_eq!(symbol_for(&syms, 0x10f), Some("a"));
        assert_eq!(symbol_for(&syms, 0x110), None);
        assert_eq!(symbol_for(&syms, 0xff), None);
        assert_eq!(symbol_for(&syms, 0x300), Some("asm"));
    }

    #[test]
    fn garbage_is_not_an_image() {
        let f = Arc::new(MappedFile::owned(b"\x7fELF\x02\x01\x01garbage".to_vec()));
        assert!(ElfImage::parse("x".into(), f, DebugPaths::host(), None).is_err());
        let f = Arc::new(MappedFile::owned(vec![0xff; 4096]));
        assert!(ElfImage::parse("x".into(), f, DebugPaths::host(), None).is_err());
    }

    /// Truncated and corrupted copies of a real ELF file with DWARF (this
    /// test binary): parsing and lookups never panic out, whatever they find.
    #[test]
    fn hostile_files_do_not_panic() {
        let real = std::fs::read("/proc/self/exe").expect("read own executable");
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let mut variants: Vec<Vec<u8>> = Vec::new();
        for cut in [
            64usize,
            1000,
            4096,
            real.len() / 3,
            real.len() / 2,
            real.len() - 1,
        ] {
            variants.push(real[..cut.min(real.len())].to_vec());
        }
        for _ in 0..24 {
            let mut v = real.clone();
            for _ in 0..64 {
                let i = (next() % v.len() as u64) as usize;
                v[i] = next() as u8;
            }
            // Also hit the headers, where sizes and offsets live.
            for _ in 0..8 {
                let i = (next() % 4096.min(v.len() as u64)) as usize;
                v[i] = next() as u8;
            }
            variants.push(v);
        }
        for v in variants {
            let file = Arc::new(MappedFile::owned(v));
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                if let Ok(image) =
                    ElfImage::parse("x".into(), file.clone(), DebugPaths::host(), None)
                {
                    for probe in [0u64, 0x1000, 0x2_0000, 0x10_0000, u64::MAX] {
                        let _ = image.lookup(probe);
                    }
                }
                if let Some(ctx) = DwarfContext::load(&file, None) {
                    for probe in [0u64, 0x1000, 0x2_0000, 0x10_0000] {
                        let _ = ctx.frames(probe, 16);
                    }
                }
            }));
            assert!(result.is_ok(), "a parser panicked past the guards");
        }
    }

    /// A module list without open files (as a snapshot read back from
    /// elsewhere would be): the files are opened by path through the
    /// [`DebugSource`], and the result is the same as with the captured files.
    #[test]
    fn modules_without_files_are_opened_through_the_debug_source() {
        let me = std::process::id() as i32;
        let mut maps = crate::proc::read_maps(me).expect("own maps");
        maps.sort_by_key(|m| m.start);
        let captured = crate::module::capture(me, &maps, &mut ModuleCache::new());
        let mut bare = captured.clone();
        for m in &mut bare.modules {
            m.file = None;
        }
        let here =
            modules_without_files_are_opened_through_the_debug_source as fn() as usize as u64;
        let with = Symbolizer::new().space(&captured, &TargetFiles::host());
        let without = Symbolizer::new().space(&bare, &TargetFiles::host());
        let a = Symbolizer::new().symbolize(&with, here, false);
        let b = Symbolizer::new().symbolize(&without, here, false);
        assert_eq!(a, b);
        assert!(
            a.frames.iter().any(|f| f
                .function
                .as_deref()
                .is_some_and(|n| n.contains("modules_without_files_are_opened"))),
            "{a:?}"
        );
        // A module whose file is gone says so, and keeps its offsets.
        let mut gone = bare.clone();
        for m in &mut gone.modules {
            if m.path.is_some() {
                m.path = Some(PathBuf::from("/nonexistent/aiodebug-test-module"));
            }
        }
        let space = Symbolizer::new().space(&gone, &TargetFiles::host());
        let m = space.module_at(here).expect("module");
        assert!(m.image.is_none());
        assert!(m
            .problem
            .as_deref()
            .is_some_and(|p| p.starts_with("cannot open")));
        let c = Symbolizer::new().symbolize(&space, here, false);
        assert_eq!(c.module_offset, a.module_offset);
    }

    #[test]
    fn build_id_paths() {
        assert_eq!(
            build_id_path(Path::new("/usr/lib/debug"), &[0xab, 0xcd, 0xef]),
            Some(PathBuf::from("/usr/lib/debug/.build-id/ab/cdef.debug"))
        );
        assert_eq!(build_id_path(Path::new("/usr/lib/debug"), &[0xab]), None);
    }
}
