//! Function packs: sets of registered functions an agent can carry besides the built-in
//! `agent.*` functions, switched on and off by name (`croupier agent --packs node,container`).
//!
//! Layout:
//! - this module — [`Pack`] (one pack), [`Packs`] (the chosen list, parsed from
//!   `--packs` / `CROUPIER_PACKS`) and [`install`], which registers the chosen packs on a
//!   provider and merges what they add to the heartbeat status.
//! - `node` — `node.metrics` and `node.resources` (sysinfo, bollard for the Docker version),
//!   plus the `cpu_percent` and `memory_percent` heartbeat summary: `node/metrics.rs`,
//!   `node/resources.rs`, `node/heartbeat.rs`.
//! - `container` — `container.*`: list, inspect, create, start, stop, restart, remove, exec,
//!   and the jobs `container.logs` and `container.run`, through a small Docker trait so that
//!   tests can fake Docker: `container/docker.rs` (the trait and the bollard client),
//!   `error.rs`, `descriptors.rs`, `params.rs`, `results.rs`, `calls.rs` (the synchronous
//!   functions), `jobs.rs`, `procs.rs` (the processes of a cancelled exec, from `/proc`), and
//!   for tests `fake.rs` and `tests.rs`.
//! - `pipeline` — `pipeline.start`: runs a stored pipeline template's steps as local calls.
//!
//! A new pack is a module beside `node` with a `register` function, a variant of [`Pack`] and
//! a line in [`Pack::ALL`] and [`install`].

mod container;
mod node;
mod pipeline;

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use croupier_sdk::Provider;
use futures::future::BoxFuture;
use tokio_util::sync::CancellationToken;

pub use node::{InventoryTimes, MetricsTimes, Thresholds};

/// One pack of functions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Pack {
    /// `node.*`: host metrics and inventory.
    Node,
    /// `container.*`: the host's Docker containers.
    Container,
    /// `pipeline.start`: runs stored pipeline templates' steps.
    Pipeline,
}

impl Pack {
    /// Every pack that exists, in registration order.
    pub const ALL: &'static [Pack] = &[Pack::Node, Pack::Container, Pack::Pipeline];

    /// The pack's name as given to `--packs`.
    pub fn name(self) -> &'static str {
        match self {
            Pack::Node => "node",
            Pack::Container => "container",
            Pack::Pipeline => "pipeline",
        }
    }
}

impl fmt::Display for Pack {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Pack {
    type Err = PackError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Pack::ALL
            .iter()
            .copied()
            .find(|p| p.name() == s)
            .ok_or_else(|| PackError::Unknown(s.to_string()))
    }
}

/// Why a pack list could not be parsed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PackError {
    /// A name that is no pack.
    #[error("unknown pack {0:?} (known packs: {known}; \"all\" for every pack, \"none\" for none)", known = known())]
    Unknown(String),
    /// `all` or `none` given together with other names.
    #[error("{0:?} must be given alone, not in a list with other packs")]
    NotAlone(String),
}

fn known() -> String {
    Pack::ALL
        .iter()
        .map(|p| p.name())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The packs an agent carries: a list without duplicates, in [`Pack::ALL`] order.
///
/// Parsed from a comma-separated list of names (spaces around names are ignored): `node`,
/// `container`; `all` for every pack; `none` or the empty string for no pack.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Packs(Vec<Pack>);

impl Packs {
    /// Every pack that exists (the default).
    pub fn all() -> Self {
        Packs(Pack::ALL.to_vec())
    }

    /// No pack: only the built-in `agent.*` functions.
    pub fn none() -> Self {
        Packs(Vec::new())
    }

    /// The packs, in registration order.
    pub fn iter(&self) -> impl Iterator<Item = Pack> + '_ {
        self.0.iter().copied()
    }

    /// True when no pack is chosen.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// True when `pack` is chosen.
    pub fn contains(&self, pack: Pack) -> bool {
        self.0.contains(&pack)
    }
}

impl Default for Packs {
    fn default() -> Self {
        Packs::all()
    }
}

impl FromStr for Packs {
    type Err = PackError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let names: Vec<&str> = s
            .split(',')
            .map(str::trim)
            .filter(|n| !n.is_empty())
            .collect();
        for keyword in ["all", "none"] {
            if names.contains(&keyword) {
                return if names.len() == 1 {
                    Ok(if keyword == "all" {
                        Packs::all()
                    } else {
                        Packs::none()
                    })
                } else {
                    Err(PackError::NotAlone(keyword.to_string()))
                };
            }
        }
        let mut packs = names
            .into_iter()
            .map(Pack::from_str)
            .collect::<Result<Vec<_>, _>>()?;
        packs.sort();
        packs.dedup();
        Ok(Packs(packs))
    }
}

impl fmt::Display for Packs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("none");
        }
        let names: Vec<&str> = self.0.iter().map(|p| p.name()).collect();
        f.write_str(&names.join(","))
    }
}

/// Work a pack does beside its functions while the agent runs (reports to the server): started
/// with the agent's stop token, ends when it is cancelled.
pub(crate) struct Background {
    /// The task's name.
    pub(crate) name: &'static str,
    /// Starts it.
    pub(crate) start: Box<dyn FnOnce(CancellationToken) -> BoxFuture<'static, ()> + Send>,
}

/// When the node pack reports the inventory and the metrics.
#[derive(Clone, Debug, Default)]
pub struct Reports {
    /// The inventory's checks and resends.
    pub inventory: InventoryTimes,
    /// The metrics' samples, batches and thresholds.
    pub metrics: MetricsTimes,
}

/// Adds a pack's entries to a heartbeat's status map.
pub(crate) type StatusFn = Box<dyn Fn(&mut HashMap<String, String>) + Send + Sync>;

/// Registers the functions of `packs` on `provider`, an agent with id `agent_id`. Packs that
/// summarise themselves in heartbeats (node: `cpu_percent`, `memory_percent`) get their entries
/// merged into one [`Provider::status`] function, which replaces any set before.
///
/// The `node` and `container` packs share the agent's one Docker client; the `container` pack
/// is also told whether Docker answered at startup (asked for at most 2 s). Without Docker it
/// still registers: its descriptions say so and its calls answer `UNAVAILABLE`.
///
/// Besides the provider it returns the packs' [`Background`] work: the node pack reports the
/// inventory and the metrics (`reports`), the container pack reports Docker's container events.
pub(crate) fn install(
    provider: Provider,
    packs: &Packs,
    agent_id: &str,
    reports: &Reports,
) -> (Provider, Vec<Background>) {
    // One Docker client for the agent, handed to the packs that use it; it connects on first
    // use, so an agent without Docker pays nothing for it.
    let docker: Arc<dyn container::DockerApi> = Arc::new(container::LocalDocker::new());
    let mut status: Vec<StatusFn> = Vec::new();
    let mut background = Vec::new();
    let latest = node::Latest::default();
    let mut provider = provider;
    for pack in packs.iter() {
        let (d, reporter) = (docker.clone(), provider.reporter());
        match pack {
            Pack::Node => {
                let (d2, r2, times) = (d.clone(), reporter.clone(), reports.inventory);
                background.push(Background {
                    name: "node inventory",
                    start: Box::new(move |stop| {
                        Box::pin(node::report_inventory(d2, r2, times, stop))
                    }),
                });
                let (times, l) = (reports.metrics.clone(), latest.clone());
                let assigned = provider.assignments_handle();
                background.push(Background {
                    name: "node metrics",
                    start: Box::new(move |stop| {
                        Box::pin(node::report_metrics(d, reporter, times, l, assigned, stop))
                    }),
                });
            }
            Pack::Container => background.push(Background {
                name: "container events",
                start: Box::new(move |stop| Box::pin(container::report_events(d, reporter, stop))),
            }),
            Pack::Pipeline => {}
        }
        provider = match pack {
            Pack::Node => node::register(provider, &mut status, docker.clone(), latest.clone()),
            Pack::Container => {
                let unavailable = container::probe();
                if let Some(reason) = &unavailable {
                    tracing::warn!(
                        reason = %reason,
                        "Docker is unavailable; the container functions answer UNAVAILABLE until it runs"
                    );
                }
                container::register(provider, docker.clone(), unavailable, agent_id)
            }
            Pack::Pipeline => pipeline::register(provider),
        };
    }
    if status.is_empty() {
        return (provider, background);
    }
    let provider = provider.status(move || {
        let mut out = HashMap::new();
        for add in &status {
            add(&mut out);
        }
        out
    });
    (provider, background)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_lists_keywords_and_empty() {
        assert_eq!("node".parse::<Packs>().unwrap(), Packs(vec![Pack::Node]));
        assert_eq!(
            " node , node ".parse::<Packs>().unwrap(),
            Packs(vec![Pack::Node])
        );
        assert_eq!("all".parse::<Packs>().unwrap(), Packs::all());
        assert_eq!("none".parse::<Packs>().unwrap(), Packs::none());
        assert_eq!("".parse::<Packs>().unwrap(), Packs::none());
        assert_eq!(" , ".parse::<Packs>().unwrap(), Packs::none());
        assert_eq!(Packs::default(), Packs::all());
        assert!(Packs::all().contains(Pack::Node));
        assert!(Packs::all().contains(Pack::Container));
        assert!(!Packs::none().contains(Pack::Node));
        assert_eq!(
            "container, node".parse::<Packs>().unwrap(),
            Packs(vec![Pack::Node, Pack::Container])
        );
        assert_eq!(
            "container".parse::<Packs>().unwrap(),
            Packs(vec![Pack::Container])
        );
    }

    #[test]
    fn unknown_names_and_mixed_keywords_are_clear_errors() {
        let e = "node,bogus".parse::<Packs>().unwrap_err();
        assert_eq!(e, PackError::Unknown("bogus".into()));
        assert_eq!(
            e.to_string(),
            "unknown pack \"bogus\" (known packs: node, container, pipeline; \"all\" for every pack, \"none\" for none)"
        );
        // Names are exact: no case folding.
        assert_eq!(
            "Node".parse::<Packs>().unwrap_err(),
            PackError::Unknown("Node".into())
        );
        let e = "none,node".parse::<Packs>().unwrap_err();
        assert_eq!(e, PackError::NotAlone("none".into()));
        assert!(e.to_string().contains("must be given alone"), "{e}");
        assert_eq!(
            "all,node".parse::<Packs>().unwrap_err(),
            PackError::NotAlone("all".into())
        );
    }

    #[test]
    fn displays_as_it_parses() {
        for s in ["node", "container", "node,container", "none"] {
            assert_eq!(s.parse::<Packs>().unwrap().to_string(), s);
        }
        assert_eq!(
            Packs::all().to_string().parse::<Packs>().unwrap(),
            Packs::all()
        );
        for p in Pack::ALL {
            assert_eq!(p.to_string().parse::<Pack>().unwrap(), *p);
        }
    }
}
