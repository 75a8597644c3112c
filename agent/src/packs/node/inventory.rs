//! The node's inventory as the server keeps it ([`NodeInventory`]): collected when the agent
//! starts (so the registration carries it), checked again every `check` interval, and sent
//! when it changed or `resend` has passed since it was last sent.
//!
//! Sources: sysinfo (CPU, memory, disks, interfaces, OS), `/sys` (CPU cache, disk models, link
//! speeds, DMI vendor), `/etc/os-release`, `/proc` (container and hypervisor hints),
//! `nvidia-smi` when installed (GPUs), and Docker's version answer (Docker, containerd, runc).
//! What a source does not tell stays empty; nothing missing is an error.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use croupier_proto::control::v1::{
    CpuInfo, DiskInfo, GpuInfo, KernelInfo, MemoryInfo, NicInfo, NodeInventory, OsInfo, RuntimeInfo,
};
use croupier_sdk::Reporter;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::resources::{self, Resources};
use super::{DOCKER_TIMEOUT, blocking, unix_ms};
use crate::packs::container::DockerApi;

/// How often the inventory is collected and how often it is sent unchanged.
#[derive(Clone, Copy, Debug)]
pub struct InventoryTimes {
    /// Collected again this often; sent when it changed. Default 10 min.
    pub check: Duration,
    /// Sent at least this often, changed or not. Default 24 h.
    pub resend: Duration,
}

impl Default for InventoryTimes {
    fn default() -> Self {
        InventoryTimes {
            check: Duration::from_secs(600),
            resend: Duration::from_secs(24 * 3600),
        }
    }
}

/// Collects the node's inventory now.
pub(crate) async fn collect(docker: &dyn DockerApi) -> Option<NodeInventory> {
    let base = match blocking(resources::inventory).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "inventory not collected: system information unavailable");
            return None;
        }
        Err(e) => {
            tracing::warn!(error = %e.message, "inventory not collected");
            return None;
        }
    };
    let (runtimes, extra) = tokio::join!(runtimes(docker), blocking(host_details));
    let extra = extra.unwrap_or_default();
    Some(build(base, extra, runtimes))
}

/// What `/sys`, `/proc`, `/etc` and `nvidia-smi` tell beyond sysinfo.
#[derive(Default)]
struct HostDetails {
    node_type: String,
    cache_bytes: u64,
    max_frequency_mhz: u64,
    /// Memory type and speed (MT/s) from SMBIOS, where the firmware tells.
    memory: (String, u64),
    os_name: String,
    os_version: String,
    gpus: Vec<GpuInfo>,
}

fn host_details() -> HostDetails {
    let os_release = std::fs::read_to_string("/etc/os-release").unwrap_or_default();
    let field = |k: &str| {
        os_release
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{k}=")))
            .map(|v| v.trim_matches('"').to_string())
            .unwrap_or_default()
    };
    HostDetails {
        node_type: node_type().into(),
        cache_bytes: cpu_cache_bytes(),
        max_frequency_mhz: max_frequency_mhz(),
        memory: memory_device(),
        os_name: field("NAME"),
        os_version: field("VERSION_ID"),
        gpus: gpus(),
    }
}

fn build(r: Resources, extra: HostDetails, runtimes: RuntimeInfo) -> NodeInventory {
    let kernel = kernel(&r.os.kernel_version);
    NodeInventory {
        node_type: extra.node_type,
        cpu: Some(CpuInfo {
            model: r.cpu.brand,
            vendor: r.cpu.vendor,
            cores: r.cpu.physical_cores.unwrap_or(0) as u32,
            threads: r.cpu.logical_cpus as u32,
            frequency_mhz: extra.max_frequency_mhz,
            cache_bytes: extra.cache_bytes,
            arch: r.os.arch.clone(),
        }),
        memory: Some(MemoryInfo {
            total_bytes: r.memory.total_bytes,
            swap_total_bytes: r.memory.swap_total_bytes,
            memory_type: extra.memory.0,
            frequency_mhz: extra.memory.1,
        }),
        gpus: extra.gpus,
        disks: hardware_disks(r.disks)
            .into_iter()
            .map(|d| DiskInfo {
                model: disk_model(&d.name),
                name: d.name,
                total_bytes: d.total_bytes,
                kind: d.kind,
                mount_point: d.mount_point,
                file_system: d.file_system,
            })
            .collect(),
        nics: r
            .networks
            .into_iter()
            // A container's end of a veth pair comes and goes with the container.
            .filter(|n| !n.interface.starts_with("veth"))
            .map(|n| NicInfo {
                speed_mbps: link_speed(&n.interface),
                name: n.interface,
                mac: n.mac,
                addresses: n
                    .addresses
                    .iter()
                    .map(|a| format!("{}/{}", a.address, a.prefix))
                    .collect(),
            })
            .collect(),
        os: Some(OsInfo {
            distribution: if extra.os_name.is_empty() {
                r.os.name
            } else {
                extra.os_name
            },
            version: if extra.os_version.is_empty() {
                r.os.version
            } else {
                extra.os_version
            },
            arch: r.os.arch,
        }),
        kernel: Some(kernel),
        runtimes: Some(runtimes),
        hostname: r.hostname,
        collected_at: unix_ms() as i64,
    }
}

/// The file systems on block devices (`/dev/…`), or the root file system when there is none
/// (a container): overlay, tmpfs and other mounts that come and go with containers are not
/// the node's disks.
fn hardware_disks(disks: Vec<resources::Disk>) -> Vec<resources::Disk> {
    if disks.iter().any(|d| d.name.starts_with("/dev/")) {
        disks
            .into_iter()
            .filter(|d| d.name.starts_with("/dev/"))
            .collect()
    } else {
        disks.into_iter().filter(|d| d.mount_point == "/").collect()
    }
}

/// The CPU's highest frequency in MHz: cpufreq's `cpuinfo_max_freq`, else the "@ 2.20GHz" in
/// the model name, else 0. (The current frequency changes from one reading to the next and
/// would make every check look like a change.)
fn max_frequency_mhz() -> u64 {
    if let Some(khz) =
        std::fs::read_to_string("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq")
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
    {
        return khz / 1000;
    }
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.rsplit_once('@'))
        .and_then(|(_, f)| f.trim().strip_suffix("GHz"))
        .and_then(|g| g.trim().parse::<f64>().ok())
        .map_or(0, |g| (g * 1000.0).round() as u64)
}

/// The type and speed of the first installed memory module, from the SMBIOS type 17
/// ("Memory Device") tables in `/sys/firmware/dmi/entries` (readable by root; absent in many
/// virtual machines, which leaves them empty).
fn memory_device() -> (String, u64) {
    let Ok(dir) = std::fs::read_dir("/sys/firmware/dmi/entries") else {
        return (String::new(), 0);
    };
    let mut entries: Vec<_> = dir
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("17-"))
        .map(|e| e.path().join("raw"))
        .collect();
    entries.sort();
    entries
        .iter()
        .filter_map(|p| std::fs::read(p).ok())
        .find_map(|raw| smbios_memory(&raw))
        .unwrap_or_default()
}

/// Type and speed of one SMBIOS type 17 structure; None for an empty slot.
fn smbios_memory(raw: &[u8]) -> Option<(String, u64)> {
    let word = |at: usize| {
        raw.get(at..at + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
    };
    if raw.first() != Some(&17) || matches!(word(0x0C), None | Some(0)) {
        return None;
    }
    let kind = match raw.get(0x12)? {
        0x12 => "DDR",
        0x13 => "DDR2",
        0x18 => "DDR3",
        0x1A => "DDR4",
        0x1B => "LPDDR",
        0x1C => "LPDDR2",
        0x1D => "LPDDR3",
        0x1E => "LPDDR4",
        0x22 => "DDR5",
        0x23 => "LPDDR5",
        0x07 => "RAM",
        0x0F => "SDRAM",
        _ => "",
    };
    let speed = word(0x15).filter(|s| *s != 0 && *s != 0xFFFF).unwrap_or(0);
    Some((kind.to_string(), u64::from(speed)))
}

/// "6.1.0-18-amd64" → 6, 1, 0.
fn kernel(release: &str) -> KernelInfo {
    let mut parts = release
        .split(|c: char| !c.is_ascii_digit())
        .map(|p| p.parse::<u32>().unwrap_or(0));
    KernelInfo {
        major: parts.next().unwrap_or(0),
        minor: parts.next().unwrap_or(0),
        patch: parts.next().unwrap_or(0),
        release: release.to_string(),
    }
}

/// "container" inside Docker, Podman or Kubernetes; "virtual" under a hypervisor; else
/// "physical".
fn node_type() -> &'static str {
    let cgroup = std::fs::read_to_string("/proc/1/cgroup").unwrap_or_default();
    if Path::new("/.dockerenv").exists()
        || Path::new("/run/.containerenv").exists()
        || ["docker", "kubepods", "containerd", "libpod"]
            .iter()
            .any(|k| cgroup.contains(k))
    {
        return "container";
    }
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let vendor = std::fs::read_to_string("/sys/class/dmi/id/sys_vendor").unwrap_or_default();
    let virtual_vendor = [
        "QEMU",
        "KVM",
        "VMware",
        "Xen",
        "Microsoft",
        "innotek",
        "Amazon EC2",
        "Google",
    ]
    .iter()
    .any(|v| vendor.contains(v));
    if virtual_vendor
        || cpuinfo
            .lines()
            .any(|l| l.starts_with("flags") && l.split_whitespace().any(|f| f == "hypervisor"))
    {
        "virtual"
    } else {
        "physical"
    }
}

/// The largest CPU cache of cpu0 (`/sys/devices/system/cpu/cpu0/cache/index*/size`).
fn cpu_cache_bytes() -> u64 {
    let Ok(dir) = std::fs::read_dir("/sys/devices/system/cpu/cpu0/cache") else {
        return 0;
    };
    dir.flatten()
        .filter_map(|e| std::fs::read_to_string(e.path().join("size")).ok())
        .filter_map(|s| size_bytes(s.trim()))
        .max()
        .unwrap_or(0)
}

/// "32768K" → 33554432.
fn size_bytes(s: &str) -> Option<u64> {
    let (digits, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "K" => n << 10,
        "M" => n << 20,
        "G" => n << 30,
        _ => n,
    })
}

/// The model of the block device behind `/dev/NAME` (a partition's parent's model).
fn disk_model(device: &str) -> String {
    let name = device.trim_start_matches("/dev/");
    let mut candidates = vec![name.to_string()];
    // nvme0n1p1 → nvme0n1, sda1 → sda.
    if let Some(i) = name.rfind('p').filter(|_| name.starts_with("nvme")) {
        candidates.push(name[..i].to_string());
    }
    candidates.push(
        name.trim_end_matches(|c: char| c.is_ascii_digit())
            .to_string(),
    );
    candidates
        .iter()
        .find_map(|c| std::fs::read_to_string(format!("/sys/block/{c}/device/model")).ok())
        .map(|m| m.trim().to_string())
        .unwrap_or_default()
}

/// The link speed of an interface in Mbit/s; 0 when unknown (virtual links, links down).
fn link_speed(interface: &str) -> u64 {
    std::fs::read_to_string(format!("/sys/class/net/{interface}/speed"))
        .ok()
        .and_then(|s| s.trim().parse::<i64>().ok())
        .filter(|s| *s > 0)
        .map_or(0, |s| s as u64)
}

/// GPUs from `nvidia-smi`, when it is installed and answers; else none.
fn gpus() -> Vec<GpuInfo> {
    let out = std::process::Command::new("nvidia-smi")
        .args([
            "--query-gpu=name,memory.total,driver_version,compute_cap,power.limit",
            "--format=csv,noheader,nounits",
        ])
        .output();
    let Some(out) = out.ok().filter(|o| o.status.success()) else {
        return Vec::new();
    };
    let cuda = std::process::Command::new("nvidia-smi")
        .output()
        .ok()
        .and_then(|o| {
            let text = String::from_utf8_lossy(&o.stdout).into_owned();
            let (_, rest) = text.split_once("CUDA Version:")?;
            rest.split_whitespace().next().map(str::to_string)
        })
        .unwrap_or_default();
    parse_gpus(&String::from_utf8_lossy(&out.stdout), &cuda)
}

/// `nvidia-smi --query-gpu=name,memory.total,driver_version,compute_cap,power.limit` CSV.
fn parse_gpus(csv: &str, cuda: &str) -> Vec<GpuInfo> {
    csv.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let f: Vec<&str> = l.split(',').map(str::trim).collect();
            let get = |i: usize| f.get(i).copied().unwrap_or_default();
            GpuInfo {
                model: get(0).to_string(),
                memory_bytes: get(1).parse::<u64>().unwrap_or(0) << 20,
                driver_version: get(2).to_string(),
                compute_capability: get(3).to_string(),
                cuda_version: cuda.to_string(),
                power_limit_watts: get(4).parse().unwrap_or(0.0),
            }
        })
        .collect()
}

/// Docker's, containerd's and runc's versions, from Docker's version answer.
async fn runtimes(docker: &dyn DockerApi) -> RuntimeInfo {
    let Ok(Ok(v)) = tokio::time::timeout(DOCKER_TIMEOUT, docker.version()).await else {
        return RuntimeInfo::default();
    };
    let component = |name: &str| {
        v.components
            .iter()
            .flatten()
            .find(|c| c.name.eq_ignore_ascii_case(name))
            .map(|c| c.version.clone())
            .unwrap_or_default()
    };
    RuntimeInfo {
        docker: v.version.clone().unwrap_or_default(),
        containerd: component("containerd"),
        runc: component("runc"),
    }
}

/// Collects the inventory now and hands it to `reporter` (the registration carries it), then
/// checks it every `times.check` until `stop`, sending it when it changed or `times.resend`
/// has passed.
pub(crate) async fn report(
    docker: Arc<dyn DockerApi>,
    reporter: Reporter,
    times: InventoryTimes,
    stop: CancellationToken,
) {
    let mut last = collect(docker.as_ref()).await;
    if let Some(first) = &last {
        reporter.inventory(first.clone());
    }
    let mut sent_at = Instant::now();
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(times.check) => {}
        }
        let Some(now) = collect(docker.as_ref()).await else {
            continue;
        };
        let changed = !last.as_ref().is_some_and(|l| l.same_as(&now));
        if changed || sent_at.elapsed() >= times.resend {
            if changed {
                tracing::info!("node inventory changed; sending it");
            }
            reporter.inventory(now.clone());
            sent_at = Instant::now();
            last = Some(now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packs::container::LocalDocker;

    #[test]
    fn smbios_memory_devices_parse() {
        let mut raw = vec![0u8; 0x28];
        raw[0] = 17;
        raw[0x0C..0x0E].copy_from_slice(&16384u16.to_le_bytes());
        raw[0x12] = 0x1A;
        raw[0x15..0x17].copy_from_slice(&3200u16.to_le_bytes());
        assert_eq!(smbios_memory(&raw), Some(("DDR4".to_string(), 3200)));
        raw[0x0C..0x0E].copy_from_slice(&0u16.to_le_bytes());
        assert_eq!(smbios_memory(&raw), None, "an empty slot");
        assert_eq!(smbios_memory(&[4, 0, 0]), None);
    }

    #[test]
    fn kernel_sizes_and_gpus_parse() {
        let k = kernel("6.1.0-18-amd64");
        assert_eq!((k.major, k.minor, k.patch), (6, 1, 0));
        assert_eq!(kernel("").major, 0);
        assert_eq!(size_bytes("32768K"), Some(32 << 20));
        assert_eq!(size_bytes("1M"), Some(1 << 20));
        assert_eq!(size_bytes("x"), None);
        let g = parse_gpus("NVIDIA A10, 23028, 535.104.05, 8.6, 150.00\n", "12.2");
        assert_eq!(g.len(), 1);
        assert_eq!(g[0].model, "NVIDIA A10");
        assert_eq!(g[0].memory_bytes, 23028 << 20);
        assert_eq!(g[0].compute_capability, "8.6");
        assert_eq!(g[0].power_limit_watts, 150.0);
        assert_eq!(g[0].cuda_version, "12.2");
    }

    #[tokio::test]
    async fn this_host_is_described_as_proc_and_sys_say() {
        let inv = collect(&LocalDocker::new()).await.unwrap();
        assert!(["physical", "virtual", "container"].contains(&inv.node_type.as_str()));
        let cpu = inv.cpu.clone().unwrap();
        let logical = std::fs::read_to_string("/proc/cpuinfo")
            .unwrap()
            .lines()
            .filter(|l| l.starts_with("processor"))
            .count();
        assert_eq!(cpu.threads as usize, logical);
        assert_eq!(cpu.arch, std::env::consts::ARCH);
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap();
        let kib: u64 = meminfo
            .lines()
            .next()
            .unwrap()
            .split_whitespace()
            .nth(1)
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(inv.memory.clone().unwrap().total_bytes, kib * 1024);
        let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
        assert_eq!(inv.kernel.clone().unwrap().release, release.trim());
        assert!(!inv.os.clone().unwrap().distribution.is_empty());
        assert!(inv.nics.iter().any(|n| n.name == "lo"));
        // Collected twice, the host reads the same.
        let again = collect(&LocalDocker::new()).await.unwrap();
        assert!(inv.same_as(&again), "{inv:?}\n{again:?}");
    }
}
