//! Test fixtures: [`Fake`], a Docker daemon in memory behind [`DockerApi`], [`Recorder`], which
//! keeps a job's events, and helpers to build calls and output frames. Compiled for unit tests
//! only.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use bollard::container::LogOutput;
use bollard::errors::Error as DockerError;
use bollard::models::{
    ContainerConfig, ContainerCreateBody, ContainerCreateResponse, ContainerInspectResponse,
    ContainerState, ContainerStateStatusEnum, ContainerSummary, ExecConfig, SystemVersion,
};
use bollard::query_parameters::LogsOptions;
use croupier_sdk::Invocation;
use futures::StreamExt;
use serde::de::DeserializeOwned;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use super::Ctx;
use super::docker::{DockerApi, LogStream};
use super::jobs::{Report, short};
use super::params::params;
use crate::lock;

pub(super) fn server(status: u16, message: &str) -> DockerError {
    DockerError::DockerResponseServerError {
        status_code: status,
        message: message.into(),
    }
}

pub(super) fn refused() -> DockerError {
    DockerError::IOError {
        err: std::io::Error::from(std::io::ErrorKind::ConnectionRefused),
    }
}

pub(super) struct FakeContainer {
    pub(super) name: String,
    pub(super) image: String,
    pub(super) labels: HashMap<String, String>,
    pub(super) running: bool,
}

#[derive(Default)]
pub(super) struct State {
    pub(super) images: BTreeSet<String>,
    pub(super) containers: BTreeMap<String, FakeContainer>,
    pub(super) calls: Vec<String>,
    pub(super) filters: Vec<(bool, HashMap<String, Vec<String>>)>,
    /// What `logs` and `exec` stream.
    pub(super) output: Vec<LogOutput>,
    /// `logs` and `exec` output never ends and `wait` never answers.
    pub(super) hang: bool,
    pub(super) exit_code: i64,
    /// Every call fails as when the daemon is not running.
    pub(super) down: bool,
    pub(super) next: u32,
    /// What `events` streams (once).
    pub(super) events: Vec<bollard::models::EventMessage>,
}

/// A Docker daemon in memory: containers with names, labels and a running flag.
#[derive(Default)]
pub(super) struct Fake {
    st: Mutex<State>,
}

impl Fake {
    pub(super) fn with_image(image: &str) -> Arc<Fake> {
        let fake = Fake::default();
        fake.st().images.insert(image.into());
        Arc::new(fake)
    }

    pub(super) fn st(&self) -> MutexGuard<'_, State> {
        lock(&self.st)
    }

    pub(super) fn calls(&self) -> Vec<String> {
        self.st().calls.clone()
    }

    /// Records a call; fails when the daemon is "down".
    fn enter(&self, call: String) -> Result<MutexGuard<'_, State>, DockerError> {
        let mut st = self.st();
        st.calls.push(call);
        if st.down { Err(refused()) } else { Ok(st) }
    }
}

/// The id of a container given by id or name.
fn find(st: &State, id: &str) -> Result<String, DockerError> {
    st.containers
        .iter()
        .find(|(k, c)| *k == id || c.name == id)
        .map(|(k, _)| k.clone())
        .ok_or_else(|| server(404, &format!("No such container: {id}")))
}

fn stream(output: Vec<LogOutput>, hang: bool) -> LogStream {
    let items = futures::stream::iter(output.into_iter().map(Ok));
    if hang {
        Box::pin(items.chain(futures::stream::pending()))
    } else {
        Box::pin(items)
    }
}

#[async_trait]
impl DockerApi for Fake {
    async fn list(
        &self,
        all: bool,
        filters: HashMap<String, Vec<String>>,
    ) -> Result<Vec<ContainerSummary>, DockerError> {
        let mut st = self.enter("list".into())?;
        st.filters.push((all, filters.clone()));
        let wanted = filters.get("label").cloned().unwrap_or_default();
        Ok(st
            .containers
            .iter()
            .filter(|(_, c)| all || c.running)
            .filter(|(_, c)| {
                wanted.iter().all(|w| {
                    let (k, v) = w.split_once('=').unwrap();
                    c.labels.get(k).map(String::as_str) == Some(v)
                })
            })
            .map(|(id, c)| ContainerSummary {
                id: Some(id.clone()),
                names: Some(vec![format!("/{}", c.name)]),
                image: Some(c.image.clone()),
                labels: Some(c.labels.clone()),
                ..Default::default()
            })
            .collect())
    }

    async fn inspect(&self, id: &str) -> Result<ContainerInspectResponse, DockerError> {
        let st = self.enter(format!("inspect {id}"))?;
        let id = find(&st, id)?;
        let c = &st.containers[&id];
        Ok(ContainerInspectResponse {
            id: Some(id.clone()),
            name: Some(format!("/{}", c.name)),
            image: Some("sha256:fake".into()),
            state: Some(ContainerState {
                status: Some(if c.running {
                    ContainerStateStatusEnum::RUNNING
                } else {
                    ContainerStateStatusEnum::CREATED
                }),
                running: Some(c.running),
                ..Default::default()
            }),
            config: Some(ContainerConfig {
                image: Some(c.image.clone()),
                labels: Some(c.labels.clone()),
                ..Default::default()
            }),
            ..Default::default()
        })
    }

    async fn create(
        &self,
        name: Option<&str>,
        body: ContainerCreateBody,
    ) -> Result<ContainerCreateResponse, DockerError> {
        let mut st = self.enter(format!("create {}", name.unwrap_or("-")))?;
        let image = body.image.unwrap_or_default();
        if !st.images.contains(&image) {
            return Err(server(404, &format!("No such image: {image}")));
        }
        st.next += 1;
        let id = format!("{:064x}", st.next);
        let name = name
            .map(str::to_string)
            .unwrap_or_else(|| format!("c{}", st.next));
        if let Some((other, _)) = st.containers.iter().find(|(_, c)| c.name == name) {
            return Err(server(
                409,
                &format!(
                    "Conflict. The container name \"/{name}\" is already in use by \
                     container \"{other}\". You have to remove (or rename) that container \
                     to be able to reuse that name."
                ),
            ));
        }
        st.containers.insert(
            id.clone(),
            FakeContainer {
                name,
                image,
                labels: body.labels.unwrap_or_default(),
                running: false,
            },
        );
        Ok(ContainerCreateResponse {
            id,
            warnings: Vec::new(),
        })
    }

    async fn start(&self, id: &str) -> Result<(), DockerError> {
        let mut st = self.enter(format!("start {}", short(id)))?;
        let id = find(&st, id)?;
        st.containers.get_mut(&id).unwrap().running = true;
        Ok(())
    }

    async fn stop(&self, id: &str, timeout_secs: Option<i32>) -> Result<(), DockerError> {
        let mut st = self.enter(format!("stop {} {timeout_secs:?}", short(id)))?;
        let id = find(&st, id)?;
        st.containers.get_mut(&id).unwrap().running = false;
        Ok(())
    }

    async fn restart(&self, id: &str, timeout_secs: Option<i32>) -> Result<(), DockerError> {
        let mut st = self.enter(format!("restart {} {timeout_secs:?}", short(id)))?;
        let id = find(&st, id)?;
        st.containers.get_mut(&id).unwrap().running = true;
        Ok(())
    }

    async fn remove(&self, id: &str, force: bool, volumes: bool) -> Result<(), DockerError> {
        let mut st = self.enter(format!("remove {} force={force} v={volumes}", short(id)))?;
        let id = find(&st, id)?;
        if st.containers[&id].running && !force {
            return Err(server(
                409,
                &format!(
                    "You cannot remove a running container {id}. Stop the container before \
                     attempting removal or force remove"
                ),
            ));
        }
        st.containers.remove(&id);
        Ok(())
    }

    async fn wait(&self, id: &str) -> Result<i64, DockerError> {
        let hang = {
            let mut st = self.enter(format!("wait {}", short(id)))?;
            let id = find(&st, id)?;
            if !st.hang {
                st.containers.get_mut(&id).unwrap().running = false;
            }
            st.hang
        };
        if hang {
            futures::future::pending::<()>().await;
        }
        Ok(self.st().exit_code)
    }

    async fn logs(&self, id: &str, options: LogsOptions) -> Result<LogStream, DockerError> {
        let st = self.enter(format!("logs {} follow={}", short(id), options.follow))?;
        find(&st, id)?;
        Ok(stream(st.output.clone(), st.hang))
    }

    async fn exec(&self, id: &str, config: ExecConfig) -> Result<(String, LogStream), DockerError> {
        let cmd = config.cmd.unwrap_or_default().join(" ");
        let st = self.enter(format!("exec {} {cmd}", short(id)))?;
        let id = find(&st, id)?;
        if !st.containers[&id].running {
            return Err(server(409, &format!("Container {id} is not running")));
        }
        Ok(("exec1".into(), stream(st.output.clone(), st.hang)))
    }

    async fn exec_status(&self, _exec_id: &str) -> Result<(bool, Option<i64>), DockerError> {
        let st = self.enter("exec_status".into())?;
        Ok((false, Some(st.exit_code)))
    }

    async fn kill_exec(&self, exec_id: &str) -> Result<usize, DockerError> {
        drop(self.enter(format!("kill_exec {exec_id}"))?);
        Ok(1)
    }

    async fn version(&self) -> Result<SystemVersion, DockerError> {
        drop(self.enter("version".into())?);
        Ok(SystemVersion {
            version: Some("99.0.0-fake".into()),
            api_version: Some("1.41".into()),
            ..Default::default()
        })
    }

    async fn usage(&self, id: &str) -> Result<(f64, u64), DockerError> {
        drop(self.enter(format!("usage {id}"))?);
        Ok((12.5, 1 << 20))
    }

    async fn events(
        &self,
        _since_secs: Option<i64>,
    ) -> Result<super::docker::EventStream, DockerError> {
        Ok(Box::pin(futures::stream::iter(
            lock(&self.st).events.drain(..).map(Ok).collect::<Vec<_>>(),
        )))
    }
}

/// Job events recorded in memory.
#[derive(Default)]
pub(super) struct Recorder(Mutex<Vec<(String, Value)>>);

#[async_trait]
impl Report for Recorder {
    async fn emit(&self, message: String, data: Value) {
        lock(&self.0).push((message, data));
    }
}

impl Recorder {
    /// Every event reported, as (message, data).
    pub(super) fn events(&self) -> Vec<(String, Value)> {
        lock(&self.0).clone()
    }

    /// The output lines reported, as (stream, line).
    pub(super) fn lines(&self) -> Vec<(String, String)> {
        self.events()
            .into_iter()
            .filter_map(|(m, d)| Some((d["stream"].as_str()?.to_string(), m)))
            .collect()
    }
}

pub(super) const IMAGE: &str = "croupier-test/busybox:latest";

pub(super) fn ctx(fake: &Arc<Fake>) -> Ctx {
    Ctx {
        docker: fake.clone(),
        agent_id: "a1".into(),
    }
}

pub(super) fn call(payload: Value) -> Invocation {
    Invocation {
        request_id: "r1".into(),
        function_id: String::new(),
        payload,
        caller: "spiffe://croupier/client/c1".into(),
        game_id: "g".into(),
        env: "e".into(),
        idempotency_key: String::new(),
        traceparent: String::new(),
        config: HashMap::new(),
        deadline: tokio::time::Instant::now() + Duration::from_secs(60),
        cancel: CancellationToken::new(),
    }
}

pub(super) fn out(bytes: &str) -> LogOutput {
    LogOutput::StdOut {
        message: bytes.to_string().into(),
    }
}

pub(super) fn err(bytes: &str) -> LogOutput {
    LogOutput::StdErr {
        message: bytes.to_string().into(),
    }
}

/// A payload decoded as a handler's parameters, as [`super::serve`] decodes it.
pub(super) fn decode<P: DeserializeOwned>(payload: Value) -> P {
    params("test", &payload).unwrap_or_else(|e| panic!("{payload} does not decode: {e:?}"))
}
