//! Finding CPython's `_PyRuntime` in a process and choosing the layout.
//!
//! The runtime lives in the interpreter's executable (Debian's `python3.13`
//! links libpython in) or in `libpython3.X.so` (pyenv's builds, embedding
//! applications). The candidates are the mapped files whose name contains
//! `python` (an interpreter started through `ld.so` has `/proc/PID/exe`
//! pointing at the loader, but the interpreter's file is still mapped), then
//! the main executable. In each, the section `.PyRuntime` (3.13+) or the
//! dynamic symbol `_PyRuntime`, plus `Py_Version` (3.11+) for the version.

use std::collections::HashSet;
use std::path::Path;

use super::layout::{self, fixed_layout, Layout, Version, DEBUG_OFFSETS_READ};
use super::memory::{read_u64, PyResult, ReadMemory};
use crate::elf;
use crate::proc::{MapEntry, MapPath};

/// Where a process's CPython runtime is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimeLocation {
    /// The file holding it (as the target's maps name it).
    pub module: String,
    /// Address of `_PyRuntime` in the target.
    pub runtime: u64,
    /// Address of `Py_Version` in the target, if the file exports it.
    pub py_version: Option<u64>,
    /// The version the file's name states (`libpython3.11.so` → 3.11).
    pub name_version: Option<(u64, u64)>,
}

/// What the file says, at its static addresses.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RuntimeSymbols {
    /// `.PyRuntime`'s address, or `_PyRuntime`'s.
    pub runtime: Option<u64>,
    /// `Py_Version`'s.
    pub py_version: Option<u64>,
}

/// Reads the runtime's static address out of an ELF file's bytes
/// (section headers and `.dynsym` only: cheap on any executable).
pub fn runtime_symbols(data: &[u8]) -> Result<RuntimeSymbols, String> {
    let found = elf::find_addresses(data, ".PyRuntime", &["_PyRuntime", "Py_Version"])?;
    let symbol = |i: usize| found.symbols.get(i).copied().flatten();
    Ok(RuntimeSymbols {
        runtime: found.section.or_else(|| symbol(0)),
        py_version: symbol(1),
    })
}

/// `python3.11`, `libpython3.13.so.1.0` → (3, 11), (3, 13).
pub fn version_in_name(path: &str) -> Option<(u64, u64)> {
    let base = path.rsplit('/').next().unwrap_or(path);
    let at = base.find("python3.")? + "python3.".len();
    let digits: String = base
        .get(at..)?
        .chars()
        .take_while(|c| c.is_ascii_digit())
        .collect();
    Some((3, digits.parse().ok()?))
}

/// One file mapped by a process, once: its path and, of its mappings, the
/// one with the lowest file offset (the one a load bias is computed from).
#[derive(Debug, Clone, Copy)]
pub(crate) struct MappedModule<'a> {
    /// The file, as the target's maps name it.
    pub path: &'a Path,
    /// Its mapping with the lowest offset.
    pub first: &'a MapEntry,
}

/// Every file `maps` maps, once (by device and inode), in the order it first
/// appears; anonymous and pseudo mappings, and inode 0 (nothing to open),
/// are skipped. Maps sorted or not.
pub(crate) fn distinct_files(maps: &[MapEntry]) -> impl Iterator<Item = MappedModule<'_>> {
    let mut seen: HashSet<((u32, u32), u64)> = HashSet::new();
    maps.iter().filter_map(move |m| {
        let MapPath::File { path, .. } = &m.path else {
            return None;
        };
        if m.inode == 0 || !seen.insert((m.dev, m.inode)) {
            return None;
        }
        let first = maps
            .iter()
            .filter(|x| x.dev == m.dev && x.inode == m.inode)
            .min_by_key(|x| x.offset)
            .unwrap_or(m);
        Some(MappedModule {
            path: path.as_path(),
            first,
        })
    })
}

/// Finds the runtime of process `pid` (maps sorted or not). `Ok(None)`: not
/// a CPython process. Problems with candidate files are returned as `Err`
/// only when no runtime was found and a candidate looked like Python.
pub fn locate(pid: i32, maps: &[MapEntry]) -> PyResult<Option<RuntimeLocation>> {
    let exe = crate::proc::read_exe(pid);
    let mut candidates: Vec<(MappedModule, bool)> = Vec::new();
    for f in distinct_files(maps) {
        let name = f.path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        let pythonish = name.contains("python");
        let is_exe = exe.as_deref() == Some(f.path);
        if pythonish || is_exe {
            candidates.push((f, pythonish));
        }
    }
    // Files named like Python first (libpython before the executable that
    // loads it is harmless: only one of them has the runtime).
    candidates.sort_by_key(|c| !c.1);
    let mut problems = Vec::new();
    for (MappedModule { path, first }, pythonish) in candidates {
        let (mapped, bias) = match elf::map_module(pid, first) {
            Ok(m) => m,
            Err(e) => {
                if pythonish {
                    problems.push(format!("{}: {e}", path.display()));
                }
                continue;
            }
        };
        let syms = match runtime_symbols(mapped.bytes()) {
            Ok(s) => s,
            Err(e) => {
                if pythonish {
                    problems.push(format!("{}: {e}", path.display()));
                }
                continue;
            }
        };
        let Some(runtime) = syms.runtime else {
            continue;
        };
        let Some(bias) = bias else {
            problems.push(format!("{}: no load bias for its mapping", path.display()));
            continue;
        };
        let module = path.display().to_string();
        return Ok(Some(RuntimeLocation {
            name_version: version_in_name(&module),
            module,
            runtime: runtime.wrapping_add(bias),
            py_version: syms.py_version.map(|a| a.wrapping_add(bias)),
        }));
    }
    if problems.is_empty() {
        Ok(None)
    } else {
        Err(format!("no Python runtime found: {}", problems.join("; ")))
    }
}

/// Chooses the layout for a located runtime, reading the target's memory:
/// the `_Py_DebugOffsets` when the runtime starts with its cookie (3.13+),
/// else the version from `Py_Version` (or the file's name) and the fixed
/// layouts. The error names the version found.
pub fn detect_layout(mem: &dyn ReadMemory, loc: &RuntimeLocation) -> PyResult<Layout> {
    let mut head = vec![0u8; DEBUG_OFFSETS_READ];
    let n = mem
        .read(loc.runtime, &mut head)
        .map_err(|e| format!("cannot read _PyRuntime in {}: {e}", loc.module))?;
    head.truncate(n);
    if layout::debug_offsets_version(&head).is_some() {
        return layout::from_debug_offsets(&head);
    }
    let version = match loc.py_version.map(|a| read_u64(mem, a)) {
        Some(Ok(v)) => Some(Version {
            hex: v & 0xffff_ffff,
        }),
        _ => loc.name_version.map(|(maj, min)| Version {
            hex: (maj << 24) | (min << 16),
        }),
    };
    let Some(version) = version else {
        return Err(format!(
            "{}: a Python runtime of unknown version (no Py_Version: Python 3.10 or older?); 3.11 to 3.14 are supported",
            loc.module
        ));
    };
    if version.minor_version() >= (3, 13) {
        return Err(format!(
            "Python {version}: _PyRuntime does not start with _Py_DebugOffsets (cookie \"xdebugpy\" missing)"
        ));
    }
    fixed_layout(version)
        .ok_or_else(|| format!("Python {version} is not supported (3.11 to 3.14 are)"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::python::layout::tests::debug_offsets_3_13;
    use crate::python::memory::SliceMemory;

    fn loc(py_version: Option<u64>, name: Option<(u64, u64)>) -> RuntimeLocation {
        RuntimeLocation {
            module: "/usr/bin/python3".into(),
            runtime: 0x1000,
            py_version,
            name_version: name,
        }
    }

    #[test]
    fn each_mapped_file_once_with_its_lowest_offset_mapping() {
        let maps = crate::proc::parse_maps(
            b"7f0000002000-7f0000003000 r-xp 00001000 08:01 42 /usr/lib/libpython3.11.so.1.0\n\
              7f0000010000-7f0000011000 rw-p 00000000 00:00 0 \n\
              7f0000000000-7f0000001000 r--p 00000000 08:01 42 /usr/lib/libpython3.11.so.1.0\n\
              7f0000020000-7f0000021000 r--p 00000000 08:01 7 /usr/bin/python3.11\n\
              7f0000030000-7f0000031000 r--p 00000000 00:05 0 /dev/zero (deleted)\n\
              7ffc00000000-7ffc00001000 rw-p 00000000 00:00 0 [stack]\n",
        );
        let files: Vec<(String, u64)> = distinct_files(&maps)
            .map(|f| (f.path.display().to_string(), f.first.start))
            .collect();
        assert_eq!(
            files,
            [
                (
                    "/usr/lib/libpython3.11.so.1.0".to_string(),
                    0x7f00_0000_0000
                ),
                ("/usr/bin/python3.11".to_string(), 0x7f00_0002_0000),
            ]
        );
    }

    #[test]
    fn names_state_versions() {
        assert_eq!(
            version_in_name("/usr/lib/libpython3.11.so.1.0"),
            Some((3, 11))
        );
        assert_eq!(version_in_name("/usr/bin/python3.13"), Some((3, 13)));
        assert_eq!(version_in_name("/usr/bin/python3"), None);
        assert_eq!(version_in_name("/opt/app"), None);
    }

    #[test]
    fn layouts_by_debug_offsets_version_symbol_or_name() {
        let mut m = SliceMemory::new();
        m.add(0x1000, debug_offsets_3_13());
        let l = detect_layout(&m, &loc(None, None)).unwrap();
        assert_eq!(l.version.minor(), 13);

        let mut m = SliceMemory::new();
        m.add(0x1000, vec![0u8; 64]);
        m.add(0x8000, 0x030b07f0u64.to_le_bytes().to_vec());
        let l = detect_layout(&m, &loc(Some(0x8000), None)).unwrap();
        assert_eq!(l.version.to_string(), "3.11.7");
        let l = detect_layout(&m, &loc(None, Some((3, 12)))).unwrap();
        assert_eq!(l.version.minor(), 12);

        // 3.10: named in the error, not a panic.
        m.add(0x8000, 0x030a0df0u64.to_le_bytes().to_vec());
        let e = detect_layout(&m, &loc(Some(0x8000), None)).unwrap_err();
        assert!(e.contains("Python 3.10.13 is not supported"), "{e}");
        // 3.13 without its cookie: garbage.
        m.add(0x8000, 0x030d05f0u64.to_le_bytes().to_vec());
        let e = detect_layout(&m, &loc(Some(0x8000), None)).unwrap_err();
        assert!(e.contains("3.13.5") && e.contains("xdebugpy"), "{e}");
        // Nothing to tell the version.
        let e = detect_layout(&m, &loc(None, None)).unwrap_err();
        assert!(e.contains("unknown version"), "{e}");
        // Unreadable runtime.
        let e = detect_layout(&SliceMemory::new(), &loc(None, None)).unwrap_err();
        assert!(e.contains("cannot read _PyRuntime"), "{e}");
    }

    #[test]
    fn runtime_symbols_of_garbage_is_an_error() {
        assert!(runtime_symbols(b"not an elf file at all").is_err());
        assert!(runtime_symbols(&[]).is_err());
    }
}
