//! Find heartbeat registries in the ELF files a process maps, and where they
//! sit in its address space.
//!
//! A registry is found by the section [`aiodebug::abi::SECTION_NAME`] (section
//! headers survive `strip`), or failing that by symbols (`.symtab` and
//! `.dynsym`) whose name starts with [`aiodebug::abi::SYMBOL_PREFIX`]. Its
//! runtime address is its static address plus the module's load bias
//! ([`load_bias`]).
//!
//! Files are read through [`object::read::ReadCache`]: only the ELF header,
//! the program and section headers, the section-name table and (when no
//! section matches) the symbol and string tables are read, each capped.
//! Every file is untrusted: hostile or truncated files give `Err(reason)`.

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};

use aiodebug::abi;
use object::elf::{
    FileHeader32, FileHeader64, ELFMAG, ELF_NOTE_GNU, NT_GNU_BUILD_ID, PT_LOAD, PT_NOTE, SHF_ALLOC,
    SHN_UNDEF, SHT_DYNSYM, SHT_STRTAB, SHT_SYMTAB, STT_COMMON, STT_FILE, STT_OBJECT, STT_SECTION,
    STT_TLS,
};
use object::read::elf::{FileHeader, ProgramHeader, SectionHeader, Sym};
use object::read::{ReadCache, ReadRef};
use object::Endianness;

use crate::module::ElfFacts;
use crate::proc::{MapEntry, MapPath};

/// Largest registry section or symbol accepted (16 MiB).
pub const MAX_SECTION_SIZE: u64 = 16 << 20;
/// Largest symbol table, string table or section-name table read (256 MiB).
pub const MAX_TABLE_SIZE: u64 = 256 << 20;
/// Most section headers accepted.
pub const MAX_SECTIONS: u32 = 1 << 16;
/// Most program headers accepted.
pub const MAX_SEGMENTS: u32 = 1 << 12;
/// Most registry locations reported for one file.
pub const MAX_REGISTRIES: usize = 1024;
/// Largest note segment searched for a build-id.
const MAX_NOTES: u64 = 1 << 16;

/// How a registry was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Via {
    /// The section [`aiodebug::abi::SECTION_NAME`].
    Section,
    /// A symbol starting with [`aiodebug::abi::SYMBOL_PREFIX`].
    Symbol,
}

/// A registry region in an ELF file, at its static (link-time) address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RegistryLocation {
    /// Static virtual address (`sh_addr` or `st_value`).
    pub svma: u64,
    /// Size in bytes (at most [`MAX_SECTION_SIZE`]).
    pub size: u64,
    /// How it was found.
    pub via: Via,
}

pub use crate::module::{LoadSegment, ModuleCache};

/// What the engine needs of one ELF file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ModuleInfo {
    /// Registries in the file (empty for most files).
    pub registries: Vec<RegistryLocation>,
    /// The `PT_LOAD` segments; only filled when `registries` is not empty.
    pub segments: Vec<LoadSegment>,
}

/// A registry in a running process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegionInTarget {
    /// The module's path as the target's maps name it.
    pub module: PathBuf,
    /// Runtime address in the target.
    pub addr: u64,
    /// Size in bytes.
    pub size: u64,
    /// How it was found.
    pub via: Via,
}

// ---------------------------------------------------------------------------
// pure parsing

/// Finds the heartbeat registries of an ELF file held in memory: the sections
/// named [`aiodebug::abi::SECTION_NAME`], or if there is none, the defined
/// symbols whose name starts with [`aiodebug::abi::SYMBOL_PREFIX`] (a symbol
/// of size 0 gets [`aiodebug::abi::REGISTRY_SIZE`]). Sorted by address.
pub fn find_registry(data: &[u8]) -> Result<Vec<RegistryLocation>, String> {
    with_elf(data, |elf| elf.registries())
}

/// The `PT_LOAD` segments of an ELF file held in memory.
pub fn load_segments(data: &[u8]) -> Result<Vec<LoadSegment>, String> {
    with_elf(data, |elf| elf.load_segments())
}

/// The load segments and build-id of an ELF file held in memory.
pub fn facts(data: &[u8]) -> Result<ElfFacts, String> {
    facts_ref(data)
}

fn facts_ref<'data, R: ReadRef<'data>>(data: R) -> Result<ElfFacts, String> {
    with_elf(data, |elf| {
        Ok(ElfFacts {
            segments: elf.load_segments()?,
            build_id: elf.build_id()?,
        })
    })
}

/// [`facts`] of an opened file, reading only its headers and notes.
pub(crate) fn file_facts(file: &File) -> Result<ElfFacts, String> {
    let cache = ReadCache::new(file);
    facts_ref(&cache)
}

/// [`find_registry`], plus the load segments if any registry was found.
pub fn analyze(data: &[u8]) -> Result<ModuleInfo, String> {
    analyze_ref(data)
}

fn analyze_ref<'data, R: ReadRef<'data>>(data: R) -> Result<ModuleInfo, String> {
    with_elf(data, |elf| {
        let registries = elf.registries()?;
        let segments = if registries.is_empty() {
            Vec::new()
        } else {
            elf.load_segments()?
        };
        Ok(ModuleInfo {
            registries,
            segments,
        })
    })
}

/// Object-safe view of an ELF file of either class.
trait ElfView {
    fn registries(&self) -> Result<Vec<RegistryLocation>, String>;
    fn load_segments(&self) -> Result<Vec<LoadSegment>, String>;
    fn build_id(&self) -> Result<Option<Vec<u8>>, String>;
    fn data_symbols(&self) -> Vec<DataSymbol>;
    fn addresses(&self, section: &str, symbols: &[&str]) -> Result<Addresses, String>;
}

struct Parsed<'data, Elf: FileHeader, R: ReadRef<'data>> {
    header: &'data Elf,
    endian: Elf::Endian,
    data: R,
}

fn with_elf<'data, R: ReadRef<'data>, T>(
    data: R,
    f: impl FnOnce(&dyn ElfView) -> Result<T, String>,
) -> Result<T, String> {
    let ident = data
        .read_bytes_at(0, 16)
        .map_err(|()| "too short for an ELF header".to_string())?;
    if ident.get(..4) != Some(&ELFMAG[..]) {
        return Err("not an ELF file".to_string());
    }
    match ident.get(4) {
        Some(1) => f(&parse::<FileHeader32<Endianness>, R>(data)?),
        Some(2) => f(&parse::<FileHeader64<Endianness>, R>(data)?),
        other => Err(format!("unknown ELF class {other:?}")),
    }
}

fn parse<'data, Elf, R>(data: R) -> Result<Parsed<'data, Elf, R>, String>
where
    Elf: FileHeader<Endian = Endianness>,
    R: ReadRef<'data>,
{
    let header = Elf::parse(data).map_err(|e| format!("bad ELF header: {e}"))?;
    let endian = header
        .endian()
        .map_err(|e| format!("bad ELF header: {e}"))?;
    Ok(Parsed {
        header,
        endian,
        data,
    })
}

/// Reads a section's bytes, refusing sections bigger than `cap`.
fn section_bytes<'data, S: SectionHeader, R: ReadRef<'data>>(
    sh: &S,
    endian: S::Endian,
    data: R,
    cap: u64,
    what: &str,
) -> Result<&'data [u8], String> {
    let Some((offset, size)) = sh.file_range(endian) else {
        return Ok(&[]);
    };
    if size > cap {
        return Err(format!(
            "{what} is {size} bytes, more than the {cap}-byte cap"
        ));
    }
    data.read_bytes_at(offset, size)
        .map_err(|()| format!("{what} lies outside the file"))
}

impl<'data, Elf, R> Parsed<'data, Elf, R>
where
    Elf: FileHeader<Endian = Endianness>,
    R: ReadRef<'data>,
{
    fn sections(&self) -> Result<&'data [Elf::SectionHeader], String> {
        let shnum = self
            .header
            .shnum(self.endian, self.data)
            .map_err(|e| format!("bad section headers: {e}"))?;
        if shnum > MAX_SECTIONS {
            return Err(format!("{shnum} section headers, more than {MAX_SECTIONS}"));
        }
        self.header
            .section_headers(self.endian, self.data)
            .map_err(|e| format!("bad section headers: {e}"))
    }

    /// The section-name table.
    fn section_names(&self, sections: &'data [Elf::SectionHeader]) -> Result<&'data [u8], String> {
        let index = self
            .header
            .shstrndx(self.endian, self.data)
            .map_err(|e| format!("bad section name table: {e}"))?;
        let shstrtab = sections
            .get(index as usize)
            .ok_or_else(|| format!("section name table index {index} out of range"))?;
        section_bytes(
            shstrtab,
            self.endian,
            self.data,
            MAX_TABLE_SIZE,
            "the section name table",
        )
    }

    fn section_registries(
        &self,
        sections: &'data [Elf::SectionHeader],
    ) -> Result<Vec<RegistryLocation>, String> {
        let endian = self.endian;
        let names = self.section_names(sections)?;
        let wanted = abi::SECTION_NAME.as_bytes();
        let mut out = Vec::new();
        for sh in sections.iter().skip(1) {
            if !has_name(names, sh.sh_name(endian), wanted) {
                continue;
            }
            // Only an allocated section has a meaningful address.
            if !sh.sh_flags(endian).contains(SHF_ALLOC) {
                continue;
            }
            let size: u64 = sh.sh_size(endian).into();
            if size > MAX_SECTION_SIZE {
                return Err(format!(
                    "section {} is {size} bytes, more than the {MAX_SECTION_SIZE}-byte cap",
                    abi::SECTION_NAME
                ));
            }
            if size == 0 {
                continue;
            }
            out.push(RegistryLocation {
                svma: sh.sh_addr(endian).into(),
                size,
                via: Via::Section,
            });
            if out.len() >= MAX_REGISTRIES {
                break;
            }
        }
        Ok(out)
    }

    /// Calls `f` on every defined symbol of the symbol `tables` (`.symtab`,
    /// `.dynsym`, in section order) but TLS, section and file symbols,
    /// until it returns `false`. Returns the errors of the tables that
    /// could not be read (the others are still visited).
    fn visit_symbols(
        &self,
        sections: &'data [Elf::SectionHeader],
        tables: Tables,
        f: &mut dyn FnMut(&RawSymbol<'data>) -> bool,
    ) -> Vec<String> {
        let endian = self.endian;
        let mut errors = Vec::new();
        for sh in sections.iter() {
            let kind = sh.sh_type(endian);
            if kind != SHT_DYNSYM && (kind != SHT_SYMTAB || tables == Tables::Dynamic) {
                continue;
            }
            let table = if kind == SHT_SYMTAB {
                "the symbol table"
            } else {
                "the dynamic symbol table"
            };
            let visited = (|| -> Result<bool, String> {
                let bytes = section_bytes(sh, endian, self.data, MAX_TABLE_SIZE, table)?;
                let syms: &[Elf::Sym] = object::pod::slice_from_all_bytes(bytes)
                    .map_err(|()| format!("{table} has a bad size"))?;
                let strsh = sections
                    .get(sh.sh_link(endian) as usize)
                    .filter(|s| s.sh_type(endian) == SHT_STRTAB)
                    .ok_or_else(|| format!("{table} links to no string table"))?;
                let strings = section_bytes(
                    strsh,
                    endian,
                    self.data,
                    MAX_TABLE_SIZE,
                    "a symbol string table",
                )?;
                for sym in syms.iter().skip(1) {
                    if sym.st_shndx(endian) == SHN_UNDEF {
                        continue;
                    }
                    let kind = sym.st_type();
                    if kind == STT_TLS || kind == STT_SECTION || kind == STT_FILE {
                        continue;
                    }
                    let raw = RawSymbol {
                        value: sym.st_value(endian).into(),
                        size: sym.st_size(endian).into(),
                        kind,
                        name: name_at(strings, sym.st_name(endian)).unwrap_or_default(),
                    };
                    if !f(&raw) {
                        return Ok(false);
                    }
                }
                Ok(true)
            })();
            match visited {
                Ok(true) => {}
                Ok(false) => break,
                Err(e) => errors.push(e),
            }
        }
        errors
    }

    fn symbol_registries(
        &self,
        sections: &'data [Elf::SectionHeader],
    ) -> Result<Vec<RegistryLocation>, String> {
        let prefix = abi::SYMBOL_PREFIX.as_bytes();
        let mut out: Vec<RegistryLocation> = Vec::new();
        let errors = self.visit_symbols(sections, Tables::All, &mut |sym| {
            if !sym.name.starts_with(prefix) {
                return true;
            }
            let size = match sym.size {
                0 => abi::REGISTRY_SIZE as u64,
                n => n,
            };
            if sym.value == 0 || size > MAX_SECTION_SIZE || out.iter().any(|r| r.svma == sym.value)
            {
                return true;
            }
            out.push(RegistryLocation {
                svma: sym.value,
                size,
                via: Via::Symbol,
            });
            out.len() < MAX_REGISTRIES
        });
        if out.is_empty() && !errors.is_empty() {
            return Err(errors.join("; "));
        }
        Ok(out)
    }
}

/// Which symbol tables [`Parsed::visit_symbols`] reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tables {
    /// `.symtab` and `.dynsym`.
    All,
    /// `.dynsym` only (cheap on any executable: stripping keeps it).
    Dynamic,
}

/// Static addresses found by [`find_addresses`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Addresses {
    /// The section's, if the file has it.
    pub section: Option<u64>,
    /// Each asked dynamic symbol's, in the order asked (`None`: not defined).
    pub symbols: Vec<Option<u64>>,
}

/// The static address of the section named `section` and of the defined
/// dynamic symbols `symbols` of an ELF file held in memory (section headers
/// and `.dynsym` only).
pub fn find_addresses(data: &[u8], section: &str, symbols: &[&str]) -> Result<Addresses, String> {
    with_elf(data, |elf| elf.addresses(section, symbols))
}

/// A defined symbol as [`Parsed::visit_symbols`] hands it over.
struct RawSymbol<'data> {
    value: u64,
    size: u64,
    /// `STT_*`.
    kind: object::elf::SymbolType,
    /// From the name's first byte to the end of the string table.
    name: &'data [u8],
}

/// A data object of an ELF file (`STT_OBJECT`, `STT_COMMON`), at its
/// static address.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct DataSymbol {
    /// Static virtual address.
    pub address: u64,
    /// Size in bytes (at least 1).
    pub size: u64,
    /// Raw (mangled) name.
    pub name: String,
}

/// Most data symbols read of one file.
pub const MAX_DATA_SYMBOLS: usize = 1 << 20;

/// The defined data symbols of an ELF file held in memory, sorted by
/// address, one per address (at most [`MAX_DATA_SYMBOLS`]); empty when it
/// cannot be parsed.
pub fn data_symbols(data: &[u8]) -> Vec<DataSymbol> {
    with_elf(data, |elf| Ok(elf.data_symbols())).unwrap_or_default()
}

impl<'data, Elf, R> ElfView for Parsed<'data, Elf, R>
where
    Elf: FileHeader<Endian = Endianness>,
    R: ReadRef<'data>,
{
    fn registries(&self) -> Result<Vec<RegistryLocation>, String> {
        let sections = self.sections()?;
        if sections.is_empty() {
            return Ok(Vec::new());
        }
        let mut out = self.section_registries(sections)?;
        if out.is_empty() {
            out = self.symbol_registries(sections)?;
        }
        out.sort_by_key(|r| r.svma);
        Ok(out)
    }

    fn addresses(&self, section: &str, symbols: &[&str]) -> Result<Addresses, String> {
        let sections = self.sections()?;
        let mut out = Addresses {
            section: None,
            symbols: vec![None; symbols.len()],
        };
        if sections.is_empty() {
            return Ok(out);
        }
        let names = self.section_names(sections)?;
        out.section = sections
            .iter()
            .skip(1)
            .find(|sh| has_name(names, sh.sh_name(self.endian), section.as_bytes()))
            .map(|sh| sh.sh_addr(self.endian).into());
        self.visit_symbols(sections, Tables::Dynamic, &mut |sym| {
            for (i, wanted) in symbols.iter().enumerate() {
                let exact = sym
                    .name
                    .strip_prefix(wanted.as_bytes())
                    .and_then(|r| r.first())
                    == Some(&0);
                if exact && out.symbols.get(i) == Some(&None) {
                    if let Some(slot) = out.symbols.get_mut(i) {
                        *slot = Some(sym.value);
                    }
                }
            }
            true
        });
        Ok(out)
    }

    fn data_symbols(&self) -> Vec<DataSymbol> {
        let Ok(sections) = self.sections() else {
            return Vec::new();
        };
        let mut out = Vec::new();
        self.visit_symbols(sections, Tables::All, &mut |sym| {
            if sym.kind == STT_OBJECT || sym.kind == STT_COMMON {
                let end = sym
                    .name
                    .iter()
                    .position(|&b| b == 0)
                    .unwrap_or(sym.name.len());
                out.push(DataSymbol {
                    address: sym.value,
                    size: sym.size.max(1),
                    name: String::from_utf8_lossy(sym.name.get(..end).unwrap_or_default())
                        .into_owned(),
                });
            }
            out.len() < MAX_DATA_SYMBOLS
        });
        out.sort();
        out.dedup_by_key(|s| s.address);
        out
    }

    fn load_segments(&self) -> Result<Vec<LoadSegment>, String> {
        let phnum = self
            .header
            .phnum(self.endian, self.data)
            .map_err(|e| format!("bad program headers: {e}"))?;
        if phnum > MAX_SEGMENTS {
            return Err(format!("{phnum} program headers, more than {MAX_SEGMENTS}"));
        }
        let phdrs = self
            .header
            .program_headers(self.endian, self.data)
            .map_err(|e| format!("bad program headers: {e}"))?;
        Ok(phdrs
            .iter()
            .filter(|ph| ph.p_type(self.endian) == PT_LOAD)
            .map(|ph| LoadSegment {
                offset: ph.p_offset(self.endian).into(),
                vaddr: ph.p_vaddr(self.endian).into(),
                filesz: ph.p_filesz(self.endian).into(),
                memsz: ph.p_memsz(self.endian).into(),
                flags: ph.p_flags(self.endian).0,
            })
            .collect())
    }

    fn build_id(&self) -> Result<Option<Vec<u8>>, String> {
        let phdrs = self
            .header
            .program_headers(self.endian, self.data)
            .map_err(|e| format!("bad program headers: {e}"))?;
        for ph in phdrs.iter().take(MAX_SEGMENTS as usize) {
            if ph.p_type(self.endian) != PT_NOTE {
                continue;
            }
            let size: u64 = ph.p_filesz(self.endian).into();
            if size > MAX_NOTES {
                continue;
            }
            // A bad note segment is no build-id, not a bad file.
            let Ok(Some(mut notes)) = ph.notes(self.endian, self.data) else {
                continue;
            };
            while let Ok(Some(note)) = notes.next() {
                if note.name() == ELF_NOTE_GNU && note.n_type(self.endian) == NT_GNU_BUILD_ID {
                    let desc = note.desc();
                    if !desc.is_empty() && desc.len() <= 64 {
                        return Ok(Some(desc.to_vec()));
                    }
                }
            }
        }
        Ok(None)
    }
}

fn name_at(strings: &[u8], offset: u32) -> Option<&[u8]> {
    strings.get(usize::try_from(offset).ok()?..)
}

/// Whether the NUL-terminated string at `offset` equals `wanted`.
fn has_name(strings: &[u8], offset: u32, wanted: &[u8]) -> bool {
    name_at(strings, offset).is_some_and(|s| {
        s.strip_prefix(wanted)
            .is_some_and(|rest| rest.first() == Some(&0))
    })
}

/// The load bias of a module from one mapping of its file: the rule of
/// [`crate::module::load_bias`], with the mapping's start, offset and `x` bit.
pub fn load_bias(segments: &[LoadSegment], mapping: &MapEntry) -> Option<u64> {
    crate::module::load_bias(segments, mapping.start, mapping.offset, mapping.exec)
}

// ---------------------------------------------------------------------------
// files of a running process

/// Opens the file a mapping of process `pid` maps: through
/// `/proc/PID/root/<path>` first (works for targets in containers), then
/// `/proc/PID/map_files/<start>-<end>` (works for deleted files). When the
/// mapping has an inode, the opened file must have the same inode, or the
/// next way is tried.
pub fn open_mapped_file(pid: i32, entry: &MapEntry) -> std::io::Result<File> {
    let MapPath::File { path, .. } = &entry.path else {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not a file mapping",
        ));
    };
    let relative = path.strip_prefix("/").unwrap_or(path);
    let candidates = [
        Path::new(&format!("/proc/{pid}/root")).join(relative),
        PathBuf::from(format!(
            "/proc/{pid}/map_files/{:x}-{:x}",
            entry.start, entry.end
        )),
    ];
    let mut failures = Vec::new();
    let mut first_kind = None;
    for candidate in &candidates {
        let result = File::open(candidate).and_then(|f| {
            let ino = f.metadata()?.ino();
            if entry.inode != 0 && ino != entry.inode {
                return Err(std::io::Error::other(format!(
                    "is inode {ino}, the mapping is inode {}",
                    entry.inode
                )));
            }
            Ok(f)
        });
        match result {
            Ok(f) => return Ok(f),
            Err(e) => {
                first_kind.get_or_insert(e.kind());
                failures.push(format!("{}: {e}", candidate.display()));
            }
        }
    }
    Err(std::io::Error::new(
        first_kind.unwrap_or(std::io::ErrorKind::NotFound),
        failures.join("; "),
    ))
}

/// The file of a module of process `pid`, mapped into our memory, with the
/// load bias its mapping `first` (the one with the lowest offset) gives
/// (`None` when no segment covers it): [`open_mapped_file`] and
/// [`load_bias`], the one rule.
pub fn map_module(
    pid: i32,
    first: &MapEntry,
) -> Result<(crate::mapped::MappedFile, Option<u64>), String> {
    let file = open_mapped_file(pid, first).map_err(|e| e.to_string())?;
    let mapped = crate::mapped::MappedFile::map(&file).map_err(|e| e.to_string())?;
    let bias = load_segments(mapped.bytes())
        .ok()
        .and_then(|segs| load_bias(&segs, first));
    Ok((mapped, bias))
}

/// A file's identity: ((major, minor) of its device, inode).
type FileKey = ((u32, u32), u64);

/// Reads what is needed of an opened module: `Ok(default)` for non-ELF files.
fn analyze_file(file: &File) -> Result<ModuleInfo, String> {
    let mut magic = [0u8; 4];
    match file.read_exact_at(&mut magic, 0) {
        Ok(()) if magic == ELFMAG => {}
        // Too short or not ELF: a data file (locale archive, font, cache).
        _ => return Ok(ModuleInfo::default()),
    }
    let cache = ReadCache::new(file);
    analyze_ref(&cache)
}

/// Locates the heartbeat registries of process `pid` given its maps.
///
/// Considers each distinct file (by device and inode) that the process maps
/// with at least one executable mapping (a loaded module), skipping anonymous
/// and special mappings. The load bias comes from the file's mapping with the
/// lowest offset. Returns the registries found, and problems met (files that
/// could not be opened or parsed, registries outside any mapping), never fatal.
pub fn locate_registries(
    pid: i32,
    maps: &[MapEntry],
    cache: &mut ModuleCache,
) -> (Vec<RegionInTarget>, Vec<String>) {
    let mut regions = Vec::new();
    let mut problems = Vec::new();

    // Per file: the mapping with the lowest offset, and whether any is executable.
    let mut order: Vec<FileKey> = Vec::new();
    let mut files: HashMap<FileKey, (&MapEntry, bool)> = HashMap::new();
    for m in maps {
        if !matches!(m.path, MapPath::File { .. }) || m.inode == 0 {
            continue;
        }
        let key = (m.dev, m.inode);
        match files.entry(key) {
            Entry::Vacant(v) => {
                v.insert((m, m.exec));
                order.push(key);
            }
            Entry::Occupied(mut o) => {
                let (lowest, exec) = o.get_mut();
                if m.offset < lowest.offset {
                    *lowest = m;
                }
                *exec |= m.exec;
            }
        }
    }

    for key in order {
        let Some(&(entry, exec)) = files.get(&key) else {
            continue;
        };
        if !exec {
            continue;
        }
        let MapPath::File { path, .. } = &entry.path else {
            continue;
        };
        let slot = cache.files.entry(key).or_default();
        if slot.registries.is_none() {
            match open_mapped_file(pid, entry) {
                Ok(file) => {
                    let info = analyze_file(&file);
                    if matches!(&info, Ok(i) if !i.registries.is_empty()) && slot.facts.is_none() {
                        slot.facts = Some(file_facts(&file).map(std::sync::Arc::new));
                    }
                    slot.registries = Some(info.map(|i| i.registries));
                }
                Err(e) => {
                    problems.push(format!("cannot open {}: {e}", path.display()));
                    continue;
                }
            }
        }
        let registries = match &slot.registries {
            Some(Ok(r)) => r,
            Some(Err(reason)) => {
                problems.push(format!("cannot use {}: {reason}", path.display()));
                continue;
            }
            None => continue,
        };
        if registries.is_empty() {
            continue;
        }
        let segments = match &slot.facts {
            Some(Ok(f)) => f.segments.as_slice(),
            Some(Err(reason)) => {
                problems.push(format!("cannot use {}: {reason}", path.display()));
                continue;
            }
            None => &[],
        };
        let Some(bias) = load_bias(segments, entry) else {
            problems.push(format!(
                "cannot compute the load bias of {}: no loadable segment covers file offset 0x{:x}",
                path.display(),
                entry.offset
            ));
            continue;
        };
        for reg in registries {
            let addr = reg.svma.wrapping_add(bias);
            let end = addr.checked_add(reg.size);
            let mapped = end.is_some_and(|end| {
                maps.iter().any(|m| m.contains(addr))
                    && maps.iter().any(|m| m.contains(end.saturating_sub(1)))
            });
            if !mapped {
                problems.push(format!(
                    "registry of {} at 0x{addr:x} (+{} bytes) is not mapped in process {pid}",
                    path.display(),
                    reg.size
                ));
                continue;
            }
            regions.push(RegionInTarget {
                module: path.clone(),
                addr,
                size: reg.size,
                via: reg.via,
            });
        }
    }
    (regions, problems)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader};
    use std::process::{Child, Command, Stdio};
    use std::sync::atomic::{AtomicU32, Ordering};

    /// `b"AIODBGHB"` as a little-endian u64 ([`abi::MAGIC`]).
    const MAGIC_C: &str = "0x42484742444f4941ULL";

    /// A fresh temporary directory for one test.
    fn tmpdir(tag: &str) -> PathBuf {
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "aiodebug-elf-test-{}-{tag}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn gcc(dir: &Path, out: &str, src: &str, args: &[&str]) -> PathBuf {
        let c = dir.join(format!("{out}.c"));
        std::fs::write(&c, src).unwrap();
        let out = dir.join(out);
        let status = Command::new("gcc")
            .arg("-o")
            .arg(&out)
            .arg(&c)
            .args(args)
            .status()
            .expect("gcc");
        assert!(status.success(), "gcc failed for {}", c.display());
        out
    }

    fn strip(path: &Path) -> PathBuf {
        let out = path.with_extension("stripped");
        let status = Command::new("strip")
            .arg("-o")
            .arg(&out)
            .arg(path)
            .status()
            .expect("strip");
        assert!(status.success());
        out
    }

    fn section_src() -> String {
        format!(
            "__attribute__((section(\"aiodebug_hb\"), used, aligned(64)))\n\
             unsigned long long aiodebug_registry_test[16] = {{{MAGIC_C}}};\n"
        )
    }

    fn symbol_src() -> String {
        format!("unsigned long long aiodebug_registry_sym[16] = {{{MAGIC_C}}};\n")
    }

    const MAIN: &str = "#include <stdio.h>\n#include <unistd.h>\n\
        int main(void) { puts(\"ready\"); fflush(stdout); sleep(30); return 0; }\n";

    fn build_exe(dir: &Path, name: &str, args: &[&str]) -> PathBuf {
        gcc(dir, name, &format!("{}{MAIN}", section_src()), args)
    }

    /// Spawns `exe`, waits until it printed `ready`.
    fn spawn_ready(exe: &Path) -> Child {
        let mut child = Command::new(exe).stdout(Stdio::piped()).spawn().unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.as_mut().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "ready");
        child
    }

    fn reap(mut child: Child) {
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Locates the registries of a running child and reads each one's magic.
    fn magic_of(child: &Child) -> (Vec<RegionInTarget>, Vec<String>, Vec<u64>) {
        let pid = child.id() as i32;
        let maps = crate::proc::read_maps(pid).unwrap();
        let mut cache = ModuleCache::new();
        let (regions, problems) = locate_registries(pid, &maps, &mut cache);
        let magics = regions
            .iter()
            .map(|r| {
                let b = crate::memory::read(pid, r.addr, 8).unwrap();
                u64::from_le_bytes(b.try_into().unwrap())
            })
            .collect();
        // A second pass hits the cache and finds the same.
        let (again, _) = locate_registries(pid, &maps, &mut cache);
        assert_eq!(again, regions);
        (regions, problems, magics)
    }

    /// Our libc, whichever the loader mapped into this test binary.
    fn own_libc() -> Vec<u8> {
        let maps = crate::proc::read_maps(std::process::id() as i32).expect("own maps");
        let path = maps
            .iter()
            .find_map(|m| match &m.path {
                MapPath::File { path, .. }
                    if path
                        .file_name()
                        .is_some_and(|n| n.to_string_lossy().starts_with("libc.so")) =>
                {
                    Some(path.clone())
                }
                _ => None,
            })
            .expect("libc mapped");
        std::fs::read(path).expect("read libc")
    }

    #[test]
    fn sections_and_symbols_agree_with_the_object_crate() {
        use object::{Object, ObjectSection, ObjectSymbol};
        let libc = own_libc();
        let obj = object::File::parse(&*libc).expect("libc parses");
        let found = find_addresses(&libc, ".text", &["malloc", "no_such_symbol_here"]).unwrap();
        assert_eq!(
            found.section,
            obj.section_by_name(".text").map(|s| s.address())
        );
        let malloc = obj
            .dynamic_symbols()
            .find(|s| s.name() == Ok("malloc") && s.is_definition())
            .map(|s| s.address());
        assert!(malloc.is_some());
        assert_eq!(found.symbols, vec![malloc, None]);
        // A data object of libc, as object sees it (one name per address:
        // `__environ`, `_environ` and `environ` are one object).
        let data = data_symbols(&libc);
        let environ = obj
            .dynamic_symbols()
            .find(|s| s.name() == Ok("environ"))
            .map(|s| s.address())
            .expect("environ");
        assert!(data
            .iter()
            .any(|d| d.address == environ && d.name.ends_with("environ")));
        assert!(data.windows(2).all(|w| w[0].address < w[1].address));
        assert!(find_addresses(b"not an elf", ".text", &[]).is_err());
        assert!(data_symbols(b"\x7fELF garbage").is_empty());
    }

    #[test]
    fn finds_section_and_survives_strip() {
        let dir = tmpdir("section");
        let exe = build_exe(&dir, "pie", &["-O1"]);
        let data = std::fs::read(&exe).unwrap();
        let regs = find_registry(&data).unwrap();
        assert_eq!(regs.len(), 1, "{regs:?}");
        assert_eq!(regs[0].via, Via::Section);
        assert_eq!(regs[0].size, 128);
        assert_ne!(regs[0].svma, 0);
        let stripped = std::fs::read(strip(&exe)).unwrap();
        assert_eq!(find_registry(&stripped).unwrap(), regs);
        let info = analyze(&stripped).unwrap();
        assert_eq!(info.registries, regs);
        assert!(!info.segments.is_empty());
        assert_eq!(load_segments(&stripped).unwrap(), info.segments);
        // An object file: the section is there too.
        let obj = gcc(&dir, "obj.o", &section_src(), &["-c"]);
        let regs = find_registry(&std::fs::read(obj).unwrap()).unwrap();
        assert_eq!(regs.len(), 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn finds_symbol_without_section() {
        let dir = tmpdir("symbol");
        let exe = gcc(&dir, "exe", &format!("{}{MAIN}", symbol_src()), &[]);
        let data = std::fs::read(&exe).unwrap();
        let regs = find_registry(&data).unwrap();
        assert_eq!(regs.len(), 1, "{regs:?}");
        assert_eq!((regs[0].via, regs[0].size), (Via::Symbol, 128));
        // Stripped executable: no .symtab, the symbol is not in .dynsym.
        assert!(find_registry(&std::fs::read(strip(&exe)).unwrap())
            .unwrap()
            .is_empty());
        // A shared library exports it in .dynsym, which survives strip.
        let lib = gcc(&dir, "libsym.so", &symbol_src(), &["-shared", "-fPIC"]);
        let stripped = std::fs::read(strip(&lib)).unwrap();
        let regs = find_registry(&stripped).unwrap();
        assert_eq!((regs.len(), regs[0].via), (1, Via::Symbol));
        // An undefined reference to a registry is not a registry.
        let user = gcc(
            &dir,
            "libuser.so",
            "extern unsigned long long aiodebug_registry_sym[16];\n\
             unsigned long long get(void) { return aiodebug_registry_sym[0]; }\n",
            &["-shared", "-fPIC"],
        );
        assert!(find_registry(&std::fs::read(user).unwrap())
            .unwrap()
            .is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn mapping(start: u64, offset: u64, exec: bool) -> MapEntry {
        MapEntry {
            start,
            end: start.saturating_add(0x1000),
            read: true,
            write: false,
            exec,
            shared: false,
            offset,
            dev: (8, 1),
            inode: 1,
            path: MapPath::File {
                path: "/x".into(),
                deleted: false,
            },
        }
    }

    /// The rule itself is tested in `crate::module`; this wrapper passes
    /// the mapping's `x` bit (lld: the shared page mapped twice).
    #[test]
    fn load_bias_uses_the_mappings_exec_bit() {
        let seg = |offset, vaddr, filesz, flags| LoadSegment {
            offset,
            vaddr,
            filesz,
            memsz: filesz,
            flags,
        };
        let lld = [seg(0, 0, 0x5e0, 4), seg(0x5e0, 0x15e0, 0x200, 5)];
        let base = 0x7f00_0000_0000u64;
        assert_eq!(load_bias(&lld, &mapping(base, 0, false)), Some(base));
        assert_eq!(
            load_bias(&lld, &mapping(base + 0x1000, 0, true)),
            Some(base)
        );
        assert_eq!(load_bias(&lld, &mapping(base, 0x100000, false)), None);
    }

    fn check_running(exe: &Path, expect_bias_zero: bool) {
        let data = std::fs::read(exe).unwrap();
        let svma = find_registry(&data).unwrap()[0].svma;
        let child = spawn_ready(exe);
        let (regions, problems, magics) = magic_of(&child);
        reap(child);
        assert_eq!(regions.len(), 1, "{regions:?} {problems:?}");
        assert_eq!(magics, vec![abi::MAGIC]);
        assert_eq!(regions[0].addr == svma, expect_bias_zero);
        assert_eq!(regions[0].module, exe);
    }

    #[test]
    fn locates_in_running_pie_and_no_pie() {
        let dir = tmpdir("run");
        check_running(&build_exe(&dir, "pie", &["-fPIE", "-pie"]), false);
        check_running(&build_exe(&dir, "nopie", &["-fno-PIE", "-no-pie"]), true);
        let stripped = strip(&build_exe(&dir, "s", &["-O2"]));
        check_running(&stripped, false);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn locates_in_shared_libraries() {
        let dir = tmpdir("lib");
        gcc(
            &dir,
            "libhb.so",
            &format!("{}int hb_lib(void) {{ return 1; }}\n", section_src()),
            &["-shared", "-fPIC"],
        );
        // Stripped: found through .dynsym.
        gcc(
            &dir,
            "libsym.so",
            &format!("{}int sym_lib(void) {{ return 2; }}\n", symbol_src()),
            &["-shared", "-fPIC", "-s"],
        );
        let dirs = dir.to_str().unwrap();
        let exe = gcc(
            &dir,
            "main",
            &format!("int hb_lib(void); int sym_lib(void);\nint (*keep[])(void) = {{hb_lib, sym_lib}};\n{MAIN}"),
            &[
                &format!("-L{dirs}"),
                &format!("-Wl,-rpath,{dirs}"),
                "-lhb",
                "-lsym",
            ],
        );
        let child = spawn_ready(&exe);
        let (regions, problems, magics) = magic_of(&child);
        reap(child);
        assert_eq!(regions.len(), 2, "{regions:?} {problems:?}");
        assert_eq!(magics, vec![abi::MAGIC, abi::MAGIC]);
        let mut vias: Vec<_> = regions
            .iter()
            .map(|r| (r.module.file_name().unwrap().to_owned(), r.via))
            .collect();
        vias.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(
            vias,
            vec![
                ("libhb.so".into(), Via::Section),
                ("libsym.so".into(), Via::Symbol)
            ]
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn locates_in_deleted_binary() {
        let dir = tmpdir("deleted");
        let exe = build_exe(&dir, "gone", &[]);
        let child = spawn_ready(&exe);
        std::fs::remove_file(&exe).unwrap();
        let pid = child.id() as i32;
        let maps = crate::proc::read_maps(pid).unwrap();
        assert!(maps.iter().any(|m| matches!(
            &m.path,
            MapPath::File { path, deleted: true } if path == &exe
        )));
        let (regions, problems, magics) = magic_of(&child);
        reap(child);
        assert_eq!(regions.len(), 1, "{regions:?} {problems:?}");
        assert_eq!(magics, vec![abi::MAGIC]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn open_checks_inode() {
        let me = std::process::id() as i32;
        let maps = crate::proc::read_maps(me).unwrap();
        let exe = maps
            .iter()
            .find(|m| matches!(m.path, MapPath::File { .. }) && m.exec)
            .unwrap();
        assert!(open_mapped_file(me, exe).is_ok());
        let mut wrong = exe.clone();
        wrong.inode = exe.inode.wrapping_add(12345);
        let e = open_mapped_file(me, &wrong).unwrap_err();
        assert!(e.to_string().contains("inode"), "{e}");
        let mut anon = exe.clone();
        anon.path = MapPath::None;
        assert!(open_mapped_file(me, &anon).is_err());
        // The test binary may link the aiodebug crate's registry; whatever
        // is found must carry the magic.
        let mut cache = ModuleCache::new();
        let (regions, _) = locate_registries(me, &maps, &mut cache);
        assert!(!cache.is_empty());
        for r in &regions {
            let magic = crate::memory::read(me, r.addr, 8).unwrap();
            assert_eq!(magic, abi::MAGIC.to_le_bytes(), "{r:?}");
        }
    }

    #[test]
    fn locates_over_every_process() {
        // What `list` does: one cache across every process of the host.
        let mut cache = ModuleCache::new();
        let started = std::time::Instant::now();
        let mut scanned = 0;
        for pid in crate::proc::list_pids() {
            let Ok(maps) = crate::proc::read_maps(pid) else {
                continue;
            };
            let (regions, _problems) = locate_registries(pid, &maps, &mut cache);
            scanned += 1;
            for r in regions {
                // A process may exit meanwhile; a successful read has the magic.
                if let Ok(b) = crate::memory::read(pid, r.addr, 8) {
                    assert_eq!(b, abi::MAGIC.to_le_bytes(), "pid {pid}: {r:?}");
                }
            }
        }
        assert!(scanned > 0);
        assert!(started.elapsed() < std::time::Duration::from_secs(30));
    }

    /// Tiny deterministic generator for the hostile-input tests.
    struct XorShift(u64);
    impl XorShift {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
    }

    fn poke(data: &mut [u8], at: usize, bytes: &[u8]) {
        data[at..at + bytes.len()].copy_from_slice(bytes);
    }

    /// Offset of the section header of `aiodebug_hb` in a 64-bit LE ELF.
    fn hb_section_header(data: &[u8]) -> usize {
        let header = FileHeader64::<Endianness>::parse(data).unwrap();
        let endian = header.endian().unwrap();
        let sections = header.sections(endian, data).unwrap();
        let (index, _) = sections
            .section_by_name(endian, abi::SECTION_NAME.as_bytes())
            .unwrap();
        let shoff: u64 = header.e_shoff(endian);
        shoff as usize + index.0 * 64
    }

    #[test]
    fn hostile_elf() {
        assert!(find_registry(b"").is_err());
        assert!(find_registry(b"\x7fELF").is_err());
        assert!(find_registry(b"\x7fELF\x09\x01\x01\0\0\0\0\0\0\0\0\0").is_err());
        assert!(find_registry(b"#!/bin/sh\necho hi\n").is_err());
        assert!(load_segments(b"\x7fELF\x02\x01\x01").is_err());
        let mut rng = XorShift(0x9e3779b97f4a7c15);
        for len in [0usize, 1, 17, 64, 100, 4096] {
            let mut random: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
            assert!(find_registry(&random).is_err());
            if len >= 16 {
                poke(&mut random, 0, b"\x7fELF\x02\x01\x01\0");
                let _ = analyze(&random);
            }
        }

        let dir = tmpdir("hostile");
        let exe = build_exe(&dir, "exe", &[]);
        let good = std::fs::read(&exe).unwrap();
        // Truncations anywhere.
        for cut in (0..good.len()).step_by(61).chain([63, 64, 65]) {
            let _ = analyze(&good[..cut]);
            let _ = find_registry(&good[..cut]);
            let _ = load_segments(&good[..cut]);
        }
        // A section header claiming a huge size.
        let sh = hb_section_header(&good);
        let mut bad = good.clone();
        poke(&mut bad, sh + 32, &u64::MAX.to_le_bytes());
        let e = find_registry(&bad).unwrap_err();
        assert!(e.contains("cap"), "{e}");
        poke(&mut bad, sh + 32, &(MAX_SECTION_SIZE + 1).to_le_bytes());
        assert!(find_registry(&bad).is_err());
        // Huge offsets and counts in the ELF header.
        let mut bad = good.clone();
        poke(&mut bad, 0x28, &(u64::MAX - 10).to_le_bytes()); // e_shoff
        assert!(find_registry(&bad).is_err());
        let mut bad = good.clone();
        poke(&mut bad, 0x3c, &0xffffu16.to_le_bytes()); // e_shnum
        assert!(find_registry(&bad).is_err());
        let mut bad = good.clone();
        poke(&mut bad, 0x3e, &0xfff0u16.to_le_bytes()); // e_shstrndx
        assert!(find_registry(&bad).is_err());
        let mut bad = good.clone();
        poke(&mut bad, 0x20, &(u64::MAX - 10).to_le_bytes()); // e_phoff
        assert!(load_segments(&bad).is_err());
        poke(&mut bad, 0x38, &0xffffu16.to_le_bytes()); // e_phnum (PN_XNUM)
        let _ = load_segments(&bad);
        let _ = analyze(&bad);
        // Random corruption of the header tables.
        let shoff = u64::from_le_bytes(good[0x28..0x30].try_into().unwrap()) as usize;
        for _ in 0..3000 {
            let mut bad = good.clone();
            for _ in 0..4 {
                let at = if rng.next() % 2 == 0 {
                    (rng.next() % 64) as usize
                } else {
                    shoff + (rng.next() as usize % (bad.len() - shoff))
                };
                bad[at] = rng.next() as u8;
            }
            let _ = analyze(&bad);
            let _ = load_segments(&bad);
        }
        // Through a file and the read cache too.
        let path = dir.join("bad");
        let mut bad = good.clone();
        poke(&mut bad, sh + 32, &u64::MAX.to_le_bytes());
        std::fs::write(&path, &bad).unwrap();
        assert!(analyze_file(&File::open(&path).unwrap()).is_err());
        std::fs::write(&path, b"not elf").unwrap();
        assert_eq!(
            analyze_file(&File::open(&path).unwrap()),
            Ok(ModuleInfo::default())
        );
        std::fs::write(&path, &good[..100]).unwrap();
        assert!(analyze_file(&File::open(&path).unwrap()).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
