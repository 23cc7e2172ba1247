//! Which container and which Kubernetes pod a process belongs to, from
//! `/proc/PID/cgroup` (pure parser; the file is the target's, untrusted).
//!
//! Container runtimes name the cgroup of a container after its 64-hex-digit
//! id; the kubelet names the pod's cgroup after the pod UID. The shapes
//! differ by cgroup version and by cgroup driver:
//!
//! | runtime, driver | path (one line of the file) |
//! |---|---|
//! | docker, cgroupfs (v1) | `4:memory:/docker/<id>` |
//! | docker, systemd (v2) | `0::/system.slice/docker-<id>.scope` |
//! | kubelet + containerd, cgroupfs | `…:/kubepods/burstable/pod<uid>/<id>` |
//! | kubelet + containerd, systemd | `0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid with _>.slice/cri-containerd-<id>.scope` |
//! | kubelet + cri-o, systemd | `…/kubepods-pod<uid with _>.slice/crio-<id>.scope` |
//! | podman | `0::/user.slice/…/libpod-<id>.scope` |
//!
//! The innermost id found wins (a container nested in another names the
//! inner one last). `crio-conmon-<id>` is cri-o's monitor process, not the
//! container.

use std::collections::HashSet;

/// Longest file considered (a process is in at most a few dozen hierarchies).
pub const MAX_CGROUP_FILE: usize = 64 * 1024;

/// What the cgroup file says about a process.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CgroupIds {
    /// The container id (64 lowercase hex digits), if the process runs in one.
    pub container: Option<String>,
    /// The Kubernetes pod UID (`8-4-4-4-12` lowercase hex, with dashes).
    pub pod: Option<String>,
}

/// Prefixes runtimes put before the container id in a cgroup name.
const ID_PREFIXES: [&str; 6] = [
    "docker-",
    "cri-containerd-",
    "crio-",
    "libpod-",
    "containerd-",
    "",
];

fn is_hex64(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The container id named by one path component, if any.
fn container_in(component: &str) -> Option<String> {
    if component.starts_with("crio-conmon-") {
        return None;
    }
    let name = component.strip_suffix(".scope").unwrap_or(component);
    ID_PREFIXES
        .iter()
        .filter_map(|p| name.strip_prefix(p))
        .find(|id| is_hex64(id))
        .map(str::to_ascii_lowercase)
}

/// `8-4-4-4-12` hex digits.
fn is_uuid(s: &str) -> bool {
    let groups: Vec<&str> = s.split('-').collect();
    groups.len() == 5
        && groups
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(g, n)| g.len() == n && g.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// The pod UID named by one path component: `pod<uid>` (cgroupfs driver) or
/// `kubepods[-<qos>]-pod<uid with underscores>.slice` (systemd driver).
fn pod_in(component: &str) -> Option<String> {
    let raw = if let Some(rest) = component.strip_prefix("pod") {
        rest
    } else {
        let slice = component.strip_suffix(".slice")?;
        if !slice.starts_with("kubepods") {
            return None;
        }
        let at = slice.rfind("-pod")?;
        slice.get(at + 4..)?
    };
    let uid = raw.replace('_', "-");
    is_uuid(&uid).then(|| uid.to_ascii_lowercase())
}

/// Parses `/proc/PID/cgroup` (lines `hierarchy-id:controllers:path`). Bytes
/// past [`MAX_CGROUP_FILE`] and lines that are not UTF-8 are ignored.
pub fn parse_cgroup(data: &[u8]) -> CgroupIds {
    let data = data.get(..MAX_CGROUP_FILE).unwrap_or(data);
    let mut ids = CgroupIds::default();
    let mut seen_paths = HashSet::new();
    for line in data.split(|&b| b == b'\n') {
        let Ok(line) = std::str::from_utf8(line) else {
            continue;
        };
        // The path is everything after the second colon (it may contain colons).
        let mut parts = line.splitn(3, ':');
        let (Some(_), Some(_), Some(path)) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        if !seen_paths.insert(path) {
            continue;
        }
        let mut container = None;
        let mut pod = None;
        for c in path.split('/') {
            if let Some(id) = container_in(c) {
                container = Some(id);
            }
            if let Some(uid) = pod_in(c) {
                pod = Some(uid);
            }
        }
        // The first hierarchy that names something decides; v1 hierarchies
        // of one process agree, and on a hybrid host the v2 line does too.
        if ids.container.is_none() {
            ids.container = container;
        }
        if ids.pod.is_none() {
            ids.pod = pod;
        }
    }
    ids
}

/// Reads and parses `/proc/PID/cgroup`; nothing known if it is unreadable.
pub fn read(pid: i32) -> CgroupIds {
    use std::io::Read;
    let mut data = Vec::new();
    let ok = std::fs::File::open(format!("/proc/{pid}/cgroup"))
        .and_then(|f| f.take(MAX_CGROUP_FILE as u64).read_to_end(&mut data));
    match ok {
        Ok(_) => parse_cgroup(&data),
        Err(_) => CgroupIds::default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "3f1c0d2e9a8b7c6d5e4f30112233445566778899aabbccddeeff001122334455";
    const UID: &str = "8e9d4c2a-1b3f-4a5e-9c7d-0123456789ab";

    #[test]
    fn docker_cgroupfs_v1() {
        let f =
            b"12:pids:/docker/3f1c0d2e9a8b7c6d5e4f30112233445566778899aabbccddeeff001122334455\n\
11:memory:/docker/3f1c0d2e9a8b7c6d5e4f30112233445566778899aabbccddeeff001122334455\n\
1:name=systemd:/docker/3f1c0d2e9a8b7c6d5e4f30112233445566778899aabbccddeeff001122334455\n\
0::/docker/3f1c0d2e9a8b7c6d5e4f30112233445566778899aabbccddeeff001122334455\n";
        let ids = parse_cgroup(f);
        assert_eq!(ids.container.as_deref(), Some(ID));
        assert_eq!(ids.pod, None);
    }

    /// The container [`ID`] in the pod [`UID`].
    fn in_pod() -> CgroupIds {
        CgroupIds {
            container: Some(ID.into()),
            pod: Some(UID.into()),
        }
    }

    #[test]
    fn docker_systemd_v2() {
        let f = b"0::/system.slice/docker-3f1c0d2e9a8b7c6d5e4f30112233445566778899aabbccddeeff001122334455.scope\n";
        assert_eq!(parse_cgroup(f).container.as_deref(), Some(ID));
    }

    #[test]
    fn kubelet_containerd_cgroupfs_v1() {
        let f = b"12:cpu,cpuacct:/kubepods/burstable/pod8e9d4c2a-1b3f-4a5e-9c7d-0123456789ab/3f1c0d2e9a8b7c6d5e4f30112233445566778899aabbccddeeff001122334455\n\
3:memory:/kubepods/burstable/pod8e9d4c2a-1b3f-4a5e-9c7d-0123456789ab/3f1c0d2e9a8b7c6d5e4f30112233445566778899aabbccddeeff001122334455\n";
        assert_eq!(parse_cgroup(f), in_pod());
    }

    #[test]
    fn kubelet_containerd_systemd_v2() {
        let f = b"0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod8e9d4c2a_1b3f_4a5e_9c7d_0123456789ab.slice/cri-containerd-3f1c0d2e9a8b7c6d5e4f30112233445566778899aabbccddeeff001122334455.scope\n";
        assert_eq!(parse_cgroup(f), in_pod());
    }

    #[test]
    fn kubelet_crio_systemd_guaranteed_pod() {
        // Guaranteed QoS: no QoS slice; conmon's own cgroup is not the container.
        let f = b"0::/kubepods.slice/kubepods-pod8e9d4c2a_1b3f_4a5e_9c7d_0123456789ab.slice/crio-3f1c0d2e9a8b7c6d5e4f30112233445566778899aabbccddeeff001122334455.scope\n";
        assert_eq!(parse_cgroup(f), in_pod());
        let conmon = b"0::/kubepods.slice/kubepods-pod8e9d4c2a_1b3f_4a5e_9c7d_0123456789ab.slice/crio-conmon-3f1c0d2e9a8b7c6d5e4f30112233445566778899aabbccddeeff001122334455.scope\n";
        assert_eq!(
            parse_cgroup(conmon),
            CgroupIds {
                container: None,
                pod: Some(UID.into())
            }
        );
    }

    #[test]
    fn kubelet_crio_cgroupfs_v1_besteffort() {
        let f = b"10:devices:/kubepods/besteffort/pod8e9d4c2a-1b3f-4a5e-9c7d-0123456789ab/crio-3f1c0d2e9a8b7c6d5e4f30112233445566778899aabbccddeeff001122334455\n";
        assert_eq!(parse_cgroup(f), in_pod());
    }

    #[test]
    fn podman_and_nested_containers_take_the_innermost() {
        let f = b"0::/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-3f1c0d2e9a8b7c6d5e4f30112233445566778899aabbccddeeff001122334455.scope/container\n";
        assert_eq!(parse_cgroup(f).container.as_deref(), Some(ID));
        let inner = "a".repeat(64);
        let nested = format!("0::/docker/{ID}/docker/{inner}\n");
        assert_eq!(
            parse_cgroup(nested.as_bytes()).container.as_deref(),
            Some(inner.as_str())
        );
    }

    #[test]
    fn a_plain_host_process_has_neither() {
        let f = b"12:pids:/user.slice/user-0.slice/session-3.scope\n\
1:name=systemd:/user.slice/user-0.slice/session-3.scope\n0::/user.slice/user-0.slice/session-3.scope\n";
        assert_eq!(parse_cgroup(f), CgroupIds::default());
        assert_eq!(parse_cgroup(b"0::/\n"), CgroupIds::default());
        assert_eq!(parse_cgroup(b"0::/init.scope\n"), CgroupIds::default());
    }

    #[test]
    fn hostile_files_are_ignored_not_trusted() {
        assert_eq!(parse_cgroup(b""), CgroupIds::default());
        assert_eq!(parse_cgroup(b"garbage\n::\n:\n"), CgroupIds::default());
        // 63 and 65 hex digits, non-hex, a pod UID of the wrong shape.
        let short = format!("0::/docker/{}\n", &ID[..63]);
        assert_eq!(parse_cgroup(short.as_bytes()), CgroupIds::default());
        let long = format!("0::/docker/{ID}0\n");
        assert_eq!(parse_cgroup(long.as_bytes()), CgroupIds::default());
        let nonhex = format!("0::/docker/{}\n", "g".repeat(64));
        assert_eq!(parse_cgroup(nonhex.as_bytes()), CgroupIds::default());
        assert_eq!(
            parse_cgroup(b"0::/kubepods/pod1234/x\n0::/kubepods-podzz.slice\n"),
            CgroupIds::default()
        );
        // Not UTF-8: skipped.
        assert_eq!(parse_cgroup(b"0::/docker/\xff\xfe\n"), CgroupIds::default());
        // Huge: only the first part is looked at, no panic.
        let mut big = vec![b'/'; MAX_CGROUP_FILE * 2];
        big.extend_from_slice(format!("\n0::/docker/{ID}\n").as_bytes());
        assert_eq!(parse_cgroup(&big), CgroupIds::default());
        // Upper-case ids are normalized.
        let upper = format!("0::/docker/{}\n", ID.to_ascii_uppercase());
        assert_eq!(
            parse_cgroup(upper.as_bytes()).container.as_deref(),
            Some(ID)
        );
    }

    #[test]
    fn reading_ourselves_and_a_missing_process() {
        // Whatever this machine runs us in, reading never fails loudly.
        let _ = read(std::process::id() as i32);
        assert_eq!(read(i32::MAX), CgroupIds::default());
    }
}
