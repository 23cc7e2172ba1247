//! One model of a module (an ELF file or the vDSO) mapped in a process: its
//! identity, its load bias, the facts the engine needs of its file, and one
//! cache of those facts shared by registry location ([`crate::elf`]), the
//! snapshot ([`crate::attach`]), unwinding and symbolization.
//!
//! - **Identity**: by build-id when the file has one (the same bytes under
//!   any path, in any container), else by file identity (device, inode, size,
//!   mtime), else (the vDSO) by a hash of its image.
//! - **Load bias** ([`load_bias`]): one rule for every mapping of a file,
//!   including lld's layout where two segments share one file page.
//! - **Capture** ([`capture`]): the module list of a live process (paths,
//!   build-ids, biases, ranges, opened files, the vDSO image), taken just
//!   before a stop, so that what runs after the detach reads nothing of the
//!   target again; files are found through a [`DebugSource`].

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::elf::RegistryLocation;
use crate::proc::{MapEntry, MapPath};

/// `PF_X`: the segment is executable.
pub const PF_X: u32 = 1;
/// `PF_W`: the segment is writable.
pub const PF_W: u32 = 2;
/// `PF_R`: the segment is readable.
pub const PF_R: u32 = 4;
/// Page size the loader maps segments with (x86_64's smallest page).
const PAGE: u64 = 0x1000;
/// Largest vDSO image copied from a target.
pub const MAX_VDSO: u64 = 1 << 20;
/// Most modules captured per process (a sanity cap on a hostile maps file).
pub const MAX_MODULES: usize = 1 << 14;

/// A `PT_LOAD` program header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoadSegment {
    /// `p_offset`: file offset of the segment.
    pub offset: u64,
    /// `p_vaddr`: static virtual address of the segment.
    pub vaddr: u64,
    /// `p_filesz`: bytes of the file in the segment.
    pub filesz: u64,
    /// `p_memsz`: bytes of memory of the segment.
    pub memsz: u64,
    /// `p_flags` ([`PF_X`], [`PF_W`], [`PF_R`]).
    pub flags: u32,
}

/// The load bias of a module (runtime address = static address + bias), from
/// one mapping of its file: the mapping maps file offset `offset` at address
/// `start`, executable or not (`exec`).
///
/// The loader maps each `PT_LOAD` from the page below its `p_offset`, so the
/// candidates are the segments with `page_down(p_offset) ≤ offset <
/// p_offset + max(p_filesz, 1)`. lld packs segments without padding: its
/// `R` segment ends and its `R E` segment begins inside one file page, which
/// the loader maps twice (once `r--p`, once `r-xp`, one page apart in
/// memory). So the segment whose `PF_X` matches the mapping's `x` bit wins,
/// then the one with the highest offset (the one the page was mapped for,
/// when a page holds the tail of one segment and the head of the next);
/// bias = `start − offset − (p_vaddr − p_offset)` (wrapping: values are
/// untrusted). `None` when no segment covers the offset.
pub fn load_bias(segments: &[LoadSegment], start: u64, offset: u64, exec: bool) -> Option<u64> {
    let seg = segments
        .iter()
        .filter(|s| {
            let page = s.offset & !(PAGE - 1);
            page <= offset && offset < s.offset.saturating_add(s.filesz.max(1))
        })
        .max_by_key(|s| ((s.flags & PF_X != 0) == exec, s.offset))?;
    Some(
        start
            .wrapping_sub(offset)
            .wrapping_sub(seg.vaddr.wrapping_sub(seg.offset)),
    )
}

/// A file's identity as the kernel and `stat` give it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FileIdentity {
    /// (major, minor) of its device.
    pub dev: (u32, u32),
    /// Inode number.
    pub inode: u64,
    /// Size in bytes (0 when unknown).
    pub size: u64,
    /// Modification time, seconds (0 when unknown).
    pub mtime: i64,
}

impl FileIdentity {
    /// The identity of an opened file mapped by `entry` (device and inode
    /// from the mapping, as the target's mount namespace sees them).
    pub fn of(entry: &MapEntry, file: &File) -> FileIdentity {
        let md = file.metadata().ok();
        FileIdentity {
            dev: entry.dev,
            inode: entry.inode,
            size: md.as_ref().map_or(0, |m| m.len()),
            mtime: md.as_ref().map_or(0, |m| m.mtime()),
        }
    }
}

/// What a module is, independent of where and by whom it is mapped.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ModuleId {
    /// Its GNU build-id.
    BuildId(Vec<u8>),
    /// A file without a build-id.
    File(FileIdentity),
    /// An image without a file or a build-id (a vDSO): hash and length of its bytes.
    Image(u64, usize),
}

/// What the engine needs of a module file before anything else: read from
/// its program headers and notes only (a few small reads, cached).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ElfFacts {
    /// The `PT_LOAD` segments.
    pub segments: Vec<LoadSegment>,
    /// The GNU build-id, if the file has one.
    pub build_id: Option<Vec<u8>>,
}

/// One entry of the [`ModuleCache`].
#[derive(Debug, Clone, Default)]
pub(crate) struct CachedFile {
    /// Size and mtime the facts were read with (`None`: not checked yet).
    pub(crate) seen: Option<(u64, i64)>,
    /// Segments and build-id (`None`: not read yet).
    pub(crate) facts: Option<Result<Arc<ElfFacts>, String>>,
    /// Heartbeat registries (`None`: not looked for yet).
    pub(crate) registries: Option<Result<Vec<RegistryLocation>, String>>,
}

/// Facts of module files keyed by (device, inode), so that scanning every
/// process of a host, and every snapshot of a hang, reads each distinct file
/// once. Failures to open a file are not cached (they depend on the
/// process); parse results are. `Send`: a capture thread uses it.
#[derive(Debug, Default)]
pub struct ModuleCache {
    pub(crate) files: HashMap<((u32, u32), u64), CachedFile>,
}

impl ModuleCache {
    /// An empty cache.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of files cached.
    pub fn len(&self) -> usize {
        self.files.len()
    }

    /// Whether the cache is empty.
    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }

    /// Forgets every file (for long-running callers: files may be replaced
    /// and inode numbers reused).
    pub fn clear(&mut self) {
        self.files.clear();
    }

    /// The facts of the file `entry` maps, opened as `file`: read once per
    /// (device, inode), again when its size or mtime changed.
    pub fn facts(&mut self, entry: &MapEntry, file: &File) -> Result<Arc<ElfFacts>, String> {
        let id = FileIdentity::of(entry, file);
        let slot = self.files.entry((entry.dev, entry.inode)).or_default();
        if slot.seen.is_some_and(|s| s != (id.size, id.mtime)) {
            *slot = CachedFile::default();
        }
        slot.seen = Some((id.size, id.mtime));
        slot.facts
            .get_or_insert_with(|| crate::elf::file_facts(file).map(Arc::new))
            .clone()
    }
}

/// An executable mapping of a module.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CodeRange {
    /// First address.
    pub start: u64,
    /// One past the last address.
    pub end: u64,
    /// File offset mapped at `start` (0 for the vDSO: offsets into its image).
    pub offset: u64,
}

/// A module of a process at one snapshot: everything the offline stage needs
/// to know of it, captured while the process was alive.
#[derive(Debug, Clone)]
pub struct Module {
    /// Its path as the target sees it, or `[vdso]`.
    pub name: String,
    /// The path (`None` for the vDSO).
    pub path: Option<PathBuf>,
    /// First address of its mappings.
    pub start: u64,
    /// One past its last address.
    pub end: u64,
    /// Load bias: actual address − address stated in the file.
    pub bias: u64,
    /// GNU build-id, if known.
    pub build_id: Option<Vec<u8>>,
    /// Its identity (`None` when the file could not be opened).
    pub id: Option<ModuleId>,
    /// Executable mappings, by address.
    pub code: Vec<CodeRange>,
    /// The file, opened while the target was alive (through its root, or
    /// `map_files` for a deleted one); `None` for the vDSO or when it could
    /// not be opened. Not part of what a snapshot says: a cheap way to the
    /// same bytes on this host.
    pub file: Option<Arc<File>>,
    /// The image bytes (the vDSO).
    pub image: Option<Arc<Vec<u8>>>,
    /// Why the module cannot be used, if so.
    pub problem: Option<String>,
}

impl Module {
    /// The identity the symbolizer caches this module's parsed file by.
    pub fn cache_id(&self) -> Option<&ModuleId> {
        self.id.as_ref()
    }
}

/// Where the offline stage finds a module's file and its separate debug
/// information: the target's files through its root (held open, so it
/// outlives the target), `--debug-dir` directories, debuginfod.
pub trait DebugSource {
    /// Opens the file of `module` (a module without [`Module::file`]).
    fn open_module(&self, module: &Module) -> std::io::Result<File>;

    /// Roots searched, in order, for a module's debug link (`DIR/<dir of
    /// the module>/<link>`, `…/.debug/<link>`, `ROOT/usr/lib/debug/…`) and for
    /// `ROOT/usr/lib/debug/.build-id/xx/yyyy.debug`; paths that keep working
    /// as long as the source lives (see [`TargetFiles`]).
    fn roots(&self) -> Vec<PathBuf>;

    /// Directories holding debug files laid out as `/usr/lib/debug` is
    /// (`DIR/.build-id/xx/yyyy.debug`, `DIR/<dir of the module>/<link>`),
    /// searched after the roots' own.
    fn debug_dirs(&self) -> Vec<PathBuf> {
        Vec::new()
    }

    /// Something that must live as long as paths from [`DebugSource::roots`]
    /// are used (an open directory), kept by whoever caches such paths.
    fn keep_alive(&self) -> Option<Arc<File>> {
        None
    }

    /// The debuginfod client asked for debug info found nowhere else.
    fn debuginfod(&self) -> Option<Arc<crate::debuginfod::Debuginfod>> {
        None
    }
}

/// The files of one target: its root directory opened while it was alive
/// (`/proc/PID/root`, which keeps naming the same directory through
/// `/proc/self/fd/N` after the target exits), and extra debug directories.
#[derive(Debug, Clone, Default)]
pub struct TargetFiles {
    root: Option<Arc<File>>,
    /// Extra directories laid out as `/usr/lib/debug` (`--debug-dir`).
    pub debug_dirs: Vec<PathBuf>,
    /// Asked by build-id for what none of the directories has.
    pub debuginfod: Option<Arc<crate::debuginfod::Debuginfod>>,
}

impl TargetFiles {
    /// Opens the root directory of `pid` (falls back to the host's root
    /// when it cannot be opened: the paths of its maps are then tried as they are).
    pub fn open(pid: i32) -> TargetFiles {
        TargetFiles {
            root: File::open(format!("/proc/{pid}/root")).ok().map(Arc::new),
            debug_dirs: Vec::new(),
            debuginfod: None,
        }
    }

    /// The host's own files (tests, a snapshot symbolized where it was taken).
    pub fn host() -> TargetFiles {
        TargetFiles::default()
    }

    /// The root as a path usable as long as `self` lives.
    pub fn root_path(&self) -> PathBuf {
        use std::os::fd::AsRawFd;
        match &self.root {
            Some(f) => PathBuf::from(format!("/proc/self/fd/{}", f.as_raw_fd())),
            None => PathBuf::from("/"),
        }
    }
}

/// `path` (absolute, as the target names it) under `root`.
pub fn under_root(root: &Path, path: &Path) -> PathBuf {
    root.join(path.strip_prefix("/").unwrap_or(path))
}

impl DebugSource for TargetFiles {
    fn open_module(&self, module: &Module) -> std::io::Result<File> {
        let path = module.path.as_deref().ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::InvalidInput, "the module has no file")
        })?;
        let file = File::open(under_root(&self.root_path(), path))?;
        // The same file as when captured, or none.
        if let Some(ModuleId::File(id)) = &module.id {
            if file.metadata()?.ino() != id.inode {
                return Err(std::io::Error::other("the file was replaced"));
            }
        }
        Ok(file)
    }

    fn roots(&self) -> Vec<PathBuf> {
        let own = self.root_path();
        if own == Path::new("/") {
            vec![own]
        } else {
            vec![PathBuf::from("/"), own]
        }
    }

    fn debug_dirs(&self) -> Vec<PathBuf> {
        self.debug_dirs.clone()
    }

    fn keep_alive(&self) -> Option<Arc<File>> {
        self.root.clone()
    }

    fn debuginfod(&self) -> Option<Arc<crate::debuginfod::Debuginfod>> {
        self.debuginfod.clone()
    }
}

/// The modules of a live process, captured just before a stop.
#[derive(Debug, Clone, Default)]
pub struct Modules {
    /// Modules by start address: every file with an executable mapping,
    /// and the vDSO.
    pub modules: Vec<Module>,
}

impl Modules {
    /// The module containing `addr`.
    pub fn at(&self, addr: u64) -> Option<&Module> {
        let i = self.modules.partition_point(|m| m.start <= addr);
        let m = self.modules.get(i.checked_sub(1)?)?;
        (addr < m.end).then_some(m)
    }
}

/// FNV-1a, the identity of an image without a build-id.
pub fn fnv(data: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in data {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// Groups `maps` (sorted by address) of `pid` into modules: every file with
/// an executable mapping (opened through the target's root or `map_files`,
/// its facts from `cache`), and the vDSO (its image copied with
/// `process_vm_readv`, or ours: same kernel, same code). Never fails: a
/// module that cannot be used says why, and still gets offsets from its
/// mapping.
pub fn capture(pid: i32, maps: &[MapEntry], cache: &mut ModuleCache) -> Modules {
    let mut out = Modules::default();
    let mut i = 0;
    while i < maps.len() && out.modules.len() < MAX_MODULES {
        let first = &maps[i];
        let same =
            |a: &MapEntry| a.path == first.path && a.inode == first.inode && a.dev == first.dev;
        let mut j = i + 1;
        while j < maps.len() && same(&maps[j]) {
            j += 1;
        }
        let group = &maps[i..j];
        i = j;
        let code = || -> Vec<CodeRange> {
            group
                .iter()
                .filter(|g| g.exec)
                .map(|g| CodeRange {
                    start: g.start,
                    end: g.end,
                    offset: g.offset,
                })
                .collect()
        };
        match &first.path {
            MapPath::File { path, .. } if group.iter().any(|g| g.exec) => {
                out.modules
                    .push(file_module(pid, group, path, code(), cache));
            }
            MapPath::Special(s) if s == "[vdso]" => out.modules.push(vdso_module(pid, first)),
            _ => {}
        }
    }
    out.modules.sort_by_key(|m| m.start);
    out
}

fn file_module(
    pid: i32,
    group: &[MapEntry],
    path: &Path,
    code: Vec<CodeRange>,
    cache: &mut ModuleCache,
) -> Module {
    let first = &group[0];
    let exec = group.iter().find(|g| g.exec).unwrap_or(first);
    // Until (unless) the ELF file says better: where file offset 0 would be
    // mapped, so that a module that cannot be read or parsed still gets
    // offsets from its mapping (`libx.so+0x112f`), not absolute addresses.
    let mut module = Module {
        name: path.to_string_lossy().into_owned(),
        path: Some(path.to_path_buf()),
        start: first.start,
        end: group.last().map_or(first.end, |g| g.end),
        bias: exec.start.wrapping_sub(exec.offset),
        build_id: None,
        id: None,
        code,
        file: None,
        image: None,
        problem: None,
    };
    let file = match crate::elf::open_mapped_file(pid, exec) {
        Ok(f) => f,
        Err(e) => {
            module.problem = Some(format!("cannot open: {e}"));
            return module;
        }
    };
    match cache.facts(exec, &file) {
        Ok(facts) => {
            if let Some(b) = load_bias(&facts.segments, exec.start, exec.offset, exec.exec) {
                module.bias = b;
            }
            module.build_id = facts.build_id.clone();
            module.id = Some(match &facts.build_id {
                Some(b) => ModuleId::BuildId(b.clone()),
                None => ModuleId::File(FileIdentity::of(exec, &file)),
            });
        }
        Err(e) => {
            module.problem = Some(e);
            module.id = Some(ModuleId::File(FileIdentity::of(exec, &file)));
        }
    }
    module.file = Some(Arc::new(file));
    module
}

fn vdso_module(pid: i32, m: &MapEntry) -> Module {
    let mut module = Module {
        name: "[vdso]".to_string(),
        path: None,
        start: m.start,
        end: m.end,
        bias: m.start,
        build_id: None,
        id: None,
        code: vec![CodeRange {
            start: m.start,
            end: m.end,
            offset: 0,
        }],
        file: None,
        image: None,
        problem: None,
    };
    let len = m.end.saturating_sub(m.start).min(MAX_VDSO) as usize;
    let bytes = match crate::memory::read(pid, m.start, len).or_else(|_| own_vdso(len)) {
        Ok(b) => b,
        Err(e) => {
            module.problem = Some(format!("cannot read the vDSO: {e}"));
            return module;
        }
    };
    match crate::elf::facts(&bytes) {
        Ok(facts) => {
            if let Some(b) = load_bias(&facts.segments, m.start, 0, true) {
                module.bias = b;
            }
            module.build_id = facts.build_id;
        }
        Err(e) => module.problem = Some(e),
    }
    module.id = Some(ModuleId::Image(fnv(&bytes), bytes.len()));
    module.image = Some(Arc::new(bytes));
    module
}

/// Our own vDSO (same kernel, same code): used when the target's cannot be read.
fn own_vdso(len: usize) -> crate::Result<Vec<u8>> {
    let me = std::process::id() as i32;
    let maps = crate::proc::read_maps(me)?;
    let v = maps
        .iter()
        .find(|m| matches!(&m.path, MapPath::Special(s) if s == "[vdso]"))
        .ok_or_else(|| {
            crate::Error::io(
                "finding our own vDSO",
                std::io::Error::from(std::io::ErrorKind::NotFound),
            )
        })?;
    let len = len.min(v.end.saturating_sub(v.start) as usize);
    crate::memory::read(me, v.start, len)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg(offset: u64, vaddr: u64, filesz: u64, flags: u32) -> LoadSegment {
        LoadSegment {
            offset,
            vaddr,
            filesz,
            memsz: filesz,
            flags,
        }
    }

    const R: u32 = PF_R;
    const RX: u32 = PF_R | PF_X;
    const RW: u32 = PF_R | PF_W;

    #[test]
    fn bias_of_bfd_layouts() {
        // Non-PIE executable (ET_EXEC, GNU ld): bias 0.
        let exec = [
            seg(0, 0x400000, 0x5e0, R),
            seg(0x1000, 0x401000, 0x1a5, RX),
            seg(0x2000, 0x402000, 0x104, R),
            seg(0x2df8, 0x403df8, 0x230, RW),
        ];
        assert_eq!(load_bias(&exec, 0x400000, 0, false), Some(0));
        assert_eq!(load_bias(&exec, 0x401000, 0x1000, true), Some(0));
        // The data segment at offset 0x2df8 is mapped at 0x403000 from page
        // offset 0x2000, which the read-only segment at 0x2000 covers too:
        // the later segment wins (it is the one the page was mapped for).
        assert_eq!(load_bias(&exec, 0x403000, 0x2000, false), Some(0));
        // PIE (gcc + GNU ld, `readelf -l` of a Debian binary): every mapping
        // gives the same bias.
        let pie = [
            seg(0, 0, 0x628, R),
            seg(0x1000, 0x1000, 0x1c5, RX),
            seg(0x2000, 0x2000, 0x10c, R),
            seg(0x2db0, 0x3db0, 0x268, RW),
        ];
        let base = 0x5555_5555_4000u64;
        assert_eq!(load_bias(&pie, base, 0, false), Some(base));
        assert_eq!(load_bias(&pie, base + 0x1000, 0x1000, true), Some(base));
        assert_eq!(load_bias(&pie, base + 0x3000, 0x2000, false), Some(base));
        // Shared library with a non-zero first vaddr (prelinked style).
        let lib = [seg(0, 0x10000, 0x3000, RX), seg(0x3000, 0x14000, 0x800, RW)];
        let at = 0x7f00_0000_0000u64;
        assert_eq!(load_bias(&lib, at, 0, true), Some(at - 0x10000));
        assert_eq!(
            load_bias(&lib, at + 0x4000, 0x3000, false),
            Some(at - 0x10000)
        );
        // Nothing covers the offset.
        assert_eq!(load_bias(&lib, at, 0x100000, false), None);
        assert_eq!(load_bias(&[], at, 0, false), None);
    }

    #[test]
    fn bias_of_lld_two_segments_in_one_page() {
        // `readelf -lW` of a rustc 1.95 proc-macro (Linker: LLD 22.1.2): the
        // `R` segment ends at 0xa25e0, where `R E` begins, in file page
        // 0xa2000, which is mapped twice: `r--p` at base+0 (offset 0) covers
        // it, and `r-xp` at base+0xa3000 (offset 0xa2000).
        let lld = [
            seg(0, 0, 0xa25e0, R),
            seg(0xa25e0, 0xa35e0, 0x1ca930, RX),
            seg(0x26cf10, 0x26ef10, 0x195b8, RW),
            seg(0x2864c8, 0x2894c8, 0x998, RW),
        ];
        let base = 0x7f12_3400_0000u64;
        assert_eq!(load_bias(&lld, base, 0, false), Some(base));
        assert_eq!(load_bias(&lld, base + 0xa3000, 0xa2000, true), Some(base));
        // The page of the `R` tail mapped read-only again (the loader maps
        // `R` up to its end page): still the `R` segment.
        assert_eq!(load_bias(&lld, base + 0xa2000, 0xa2000, false), Some(base));
        // The first RW segment, mapped from page 0x26c000 at 0x26e000.
        assert_eq!(
            load_bias(&lld, base + 0x26e000, 0x26c000, false),
            Some(base)
        );
        // Both earlier rules fail one of the two mappings of the shared page:
        // first covering segment (r-xp gets R) and last one (r--p gets R E).
        let first = base + 0xa3000 - 0xa2000;
        let last = base - 0x1000;
        assert_ne!(load_bias(&lld, base + 0xa3000, 0xa2000, true), Some(first));
        assert_ne!(load_bias(&lld, base, 0, false), Some(last));
    }

    #[test]
    fn hostile_segments_wrap_instead_of_panicking() {
        let hostile = [
            seg(u64::MAX, 1, u64::MAX, RX),
            seg(0, u64::MAX, u64::MAX, 0),
        ];
        assert!(load_bias(&hostile, 0, 5, true).is_some());
        assert_eq!(load_bias(&hostile, u64::MAX - 0xfff, u64::MAX, false), None);
    }

    /// This test binary (lld-linked by rustc ≥ 1.90, bfd before): every one
    /// of its mappings gives the same bias as its first, and the module
    /// capture finds it with its build-id.
    #[test]
    fn every_mapping_of_our_own_executable_agrees() {
        let me = std::process::id() as i32;
        let mut maps = crate::proc::read_maps(me).expect("own maps");
        maps.sort_by_key(|m| m.start);
        let exe = std::fs::read_link("/proc/self/exe").expect("exe");
        let data = std::fs::read(&exe).expect("read exe");
        let facts = crate::elf::facts(&data).expect("facts");
        let mine: Vec<&MapEntry> = maps
            .iter()
            .filter(|m| matches!(&m.path, MapPath::File { path, .. } if *path == exe))
            .collect();
        assert!(mine.len() >= 2, "{mine:?}");
        let biases: Vec<Option<u64>> = mine
            .iter()
            .map(|m| load_bias(&facts.segments, m.start, m.offset, m.exec))
            .collect();
        assert!(
            biases.iter().all(|b| b.is_some() && *b == biases[0]),
            "{biases:?}"
        );
        let mut cache = ModuleCache::new();
        let mods = capture(me, &maps, &mut cache);
        let m = mods
            .modules
            .iter()
            .find(|m| m.path.as_deref() == Some(exe.as_path()))
            .expect("own module");
        assert_eq!(Some(m.bias), biases[0]);
        assert!(m.build_id.is_some(), "rustc links with a build-id");
        assert!(m.file.is_some() && m.problem.is_none());
        // The function this test runs in is in the module's code.
        let here = every_mapping_of_our_own_executable_agrees as fn() as usize as u64;
        assert!(m.code.iter().any(|c| c.start <= here && here < c.end));
        let vdso = mods
            .modules
            .iter()
            .find(|m| m.name == "[vdso]")
            .expect("vdso");
        assert!(vdso
            .image
            .as_ref()
            .is_some_and(|i| i.starts_with(b"\x7fELF")));
        // Second capture: facts from the cache.
        let n = cache.len();
        let _ = capture(me, &maps, &mut cache);
        assert_eq!(cache.len(), n);
    }
}
