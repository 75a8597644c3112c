//! `node.resources`: what the host is (CPU, memory, disks, network interfaces, OS), read
//! afresh on every call, and the version of its Docker daemon when that answers.

use croupier_sdk::HandlerError;
use croupier_sdk::tls::error_chain;
use schemars::JsonSchema;
use serde::Serialize;
use sysinfo::{
    CpuRefreshKind, DiskRefreshKind, Disks, MemoryRefreshKind, Networks, RefreshKind, System,
};

use super::{DOCKER_TIMEOUT, NoParams, blocking, descriptor, sysinfo_error};
use crate::descriptor::Typed;
use crate::packs::container::DockerApi;

/// `node.resources`'s descriptor.
pub(super) fn resources_descriptor() -> Typed<NoParams, Resources> {
    descriptor(
        "node.resources",
        "Host inventory: CPU brand, physical cores, logical CPUs, frequency and architecture; \
         memory; disks; network interfaces with MAC and IP addresses; OS, kernel and hostname; \
         the Docker version when Docker answers (else null, with the reason in docker_error).",
    )
}

/// `node.resources`'s result.
#[derive(Debug, Serialize, JsonSchema)]
pub(super) struct Resources {
    pub(super) hostname: String,
    pub(super) os: Os,
    pub(super) cpu: Cpu,
    pub(super) memory: Memory,
    pub(super) disks: Vec<Disk>,
    pub(super) networks: Vec<Nic>,
    pub(super) docker: Option<DockerVersion>,
    /// Why `docker` is null: Docker is not installed, not running or not answering.
    pub(super) docker_error: Option<String>,
}

/// The operating system.
#[derive(Debug, Serialize, JsonSchema)]
pub(super) struct Os {
    pub(super) name: String,
    pub(super) version: String,
    pub(super) long_version: String,
    pub(super) kernel_version: String,
    pub(super) arch: String,
}

/// The CPUs.
#[derive(Debug, Serialize, JsonSchema)]
pub(super) struct Cpu {
    pub(super) brand: String,
    pub(super) vendor: String,
    pub(super) physical_cores: Option<usize>,
    pub(super) logical_cpus: usize,
    pub(super) frequency_mhz: Option<u64>,
}

/// Memory and swap, in bytes.
#[derive(Debug, Serialize, JsonSchema)]
pub(super) struct Memory {
    pub(super) total_bytes: u64,
    pub(super) swap_total_bytes: u64,
}

/// One mounted file system.
#[derive(Debug, Serialize, JsonSchema)]
pub(super) struct Disk {
    pub(super) name: String,
    pub(super) mount_point: String,
    pub(super) file_system: String,
    /// HDD, SSD or Unknown.
    pub(super) kind: String,
    pub(super) removable: bool,
    pub(super) total_bytes: u64,
}

/// One network interface.
#[derive(Debug, Serialize, JsonSchema)]
pub(super) struct Nic {
    pub(super) interface: String,
    pub(super) mac: String,
    pub(super) addresses: Vec<Address>,
}

/// An IP address of an interface, with its prefix length.
#[derive(Debug, Serialize, JsonSchema)]
pub(super) struct Address {
    pub(super) address: String,
    pub(super) prefix: u8,
}

/// The Docker daemon's version.
#[derive(Debug, Serialize, JsonSchema)]
pub(super) struct DockerVersion {
    pub(super) version: String,
    pub(super) api_version: String,
    pub(super) os: String,
    pub(super) arch: String,
}

/// `node.resources`: the inventory and, asked at the same time, Docker's version.
pub(super) async fn resources(docker: &dyn DockerApi) -> Result<Resources, HandlerError> {
    let (inventory, docker) = tokio::join!(blocking(inventory), docker_version(docker));
    let mut inventory = inventory?.map_err(sysinfo_error)?;
    match docker {
        Ok(v) => inventory.docker = Some(v),
        Err(reason) => inventory.docker_error = Some(reason),
    }
    Ok(inventory)
}

/// Everything `node.resources` reports except Docker.
pub(super) fn inventory() -> Result<Resources, sysinfo::Error> {
    let sys = System::new_with_specifics(
        RefreshKind::nothing()
            .with_cpu(CpuRefreshKind::nothing().with_frequency())
            .with_memory(MemoryRefreshKind::everything()),
    )?;
    let cpus = sys.cpus();
    let first = cpus.first();
    let frequency = cpus
        .iter()
        .map(sysinfo::Cpu::frequency)
        .max()
        .filter(|f| *f > 0);
    let disks = Disks::new_with_refreshed_list_specifics(
        DiskRefreshKind::nothing().with_kind().with_storage(),
    )?;
    let disks = disks
        .iter()
        .map(|d| Disk {
            name: d.name().to_string_lossy().into_owned(),
            mount_point: d.mount_point().to_string_lossy().into_owned(),
            file_system: d.file_system().to_string_lossy().into_owned(),
            kind: d.kind().to_string(),
            removable: d.is_removable(),
            total_bytes: d.total_space(),
        })
        .collect();
    let networks = Networks::new_with_refreshed_list()?;
    let mut nics: Vec<Nic> = networks
        .iter()
        .map(|(name, n)| {
            let mut addresses: Vec<_> = n.ip_networks().to_vec();
            addresses.sort();
            Nic {
                interface: name.to_string_lossy().into_owned(),
                mac: n.mac_address().to_string(),
                addresses: addresses
                    .iter()
                    .map(|a| Address {
                        address: a.addr.to_string(),
                        prefix: a.prefix,
                    })
                    .collect(),
            }
        })
        .collect();
    nics.sort_by(|a, b| a.interface.cmp(&b.interface));
    let text = |r: Result<String, sysinfo::Error>| r.unwrap_or_default();
    Ok(Resources {
        hostname: text(System::host_name()),
        os: Os {
            name: text(System::name()),
            version: text(System::os_version()),
            long_version: text(System::long_os_version()),
            kernel_version: text(System::kernel_version()),
            arch: System::cpu_arch(),
        },
        cpu: Cpu {
            brand: first.map(|c| c.brand().trim()).unwrap_or_default().into(),
            vendor: first
                .map(sysinfo::Cpu::vendor_id)
                .unwrap_or_default()
                .into(),
            physical_cores: System::physical_core_count().ok(),
            logical_cpus: cpus.len(),
            frequency_mhz: frequency,
        },
        memory: Memory {
            total_bytes: sys.total_memory(),
            swap_total_bytes: sys.total_swap(),
        },
        disks,
        networks: nics,
        docker: None,
        docker_error: None,
    })
}

/// Docker's version, or why there is none. Never waits more than [`DOCKER_TIMEOUT`], the
/// connection (made on first use, negotiating the API version with older daemons) included.
async fn docker_version(docker: &dyn DockerApi) -> Result<DockerVersion, String> {
    let v = match tokio::time::timeout(DOCKER_TIMEOUT, docker.version()).await {
        Err(_) => {
            return Err(format!(
                "Docker did not answer within {} ms",
                DOCKER_TIMEOUT.as_millis()
            ));
        }
        Ok(Err(e)) => {
            return Err(format!(
                "asking Docker for its version: {}",
                error_chain(&e)
            ));
        }
        Ok(Ok(v)) => v,
    };
    Ok(DockerVersion {
        version: v.version.unwrap_or_default(),
        api_version: v.api_version.unwrap_or_default(),
        os: v.os.unwrap_or_default(),
        arch: v.arch.unwrap_or_default(),
    })
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

    use super::*;
    use crate::descriptor::check::{assert_valid, over_the_wire, schema};
    use crate::packs::container::LocalDocker;

    #[tokio::test]
    async fn resources_match_their_schema_with_or_without_docker() {
        let r = resources(&LocalDocker::new()).await.unwrap();
        let r = serde_json::to_value(&r).unwrap();
        assert_valid(
            &schema(&resources_descriptor().descriptor, true),
            &over_the_wire(&r),
        );
        assert!(r["cpu"]["logical_cpus"].as_u64().unwrap() >= 1);
        assert_eq!(r["os"]["arch"], std::env::consts::ARCH);
        // Docker is optional: either a version or the reason there is none.
        match &r["docker"] {
            Value::Null => assert!(!r["docker_error"].as_str().unwrap().is_empty(), "{r:#}"),
            d => {
                assert!(d["version"].is_string());
                assert!(r["docker_error"].is_null());
            }
        }
    }
}
