//! A test bed for the invoker and the job manager: the embedded store in memory, a registry
//! view on it, a fake link whose agents the test scripts, and tokio's paused clock.

#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use croupier_control::AgentLink;
use croupier_control::audit::AuditLog;
use croupier_control::fake::{FakeLink, Reply};
use croupier_function::pipeline::Pipelines;
use croupier_function::{InvokeConfig, Invoker, JobConfig, JobManager};
use croupier_proto::control::v1::Invoke;
use croupier_proto::function::v1::{InvokeFunctionRequest, InvokeOptions};
use croupier_proto::task::TaskTracker;
use croupier_registry::identity::{Identity, Role};
use croupier_registry::keys;
use croupier_registry::model::{AgentRecord, DescriptorRecord, ProvidedFunction};
use croupier_registry::store::Store;
use croupier_registry::store::embedded::EmbeddedStore;
use croupier_registry::view::RegistryView;
use tokio_util::sync::CancellationToken;

/// The parts under test and their fakes.
pub struct Bed {
    pub store: Arc<dyn Store>,
    pub view: Arc<RegistryView>,
    pub link: FakeLink,
    pub invoker: Invoker,
    pub jobs: Arc<JobManager>,
    pub stop: CancellationToken,
}

impl Drop for Bed {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// A bed with `invoke` and `jobs` settings over a fresh in-memory store.
pub async fn bed(invoke: InvokeConfig, jobs: JobConfig) -> Bed {
    bed_on(Arc::new(EmbeddedStore::in_memory()), invoke, jobs).await
}

/// A bed over `store` (which may hold data already).
pub async fn bed_on(store: Arc<dyn Store>, invoke: InvokeConfig, jobs: JobConfig) -> Bed {
    let stop = CancellationToken::new();
    let view = RegistryView::start(store.clone(), stop.child_token())
        .await
        .unwrap();
    let link = FakeLink::new();
    let as_link: Arc<dyn AgentLink> = Arc::new(link.clone());
    let audit = AuditLog::disabled();
    let manager = JobManager::start(
        jobs,
        store.clone(),
        as_link.clone(),
        None,
        audit.clone(),
        &TaskTracker::new(),
        stop.child_token(),
    )
    .await
    .unwrap();
    let pipelines = Arc::new(Pipelines::new(store.clone(), audit.clone()));
    let invoker = Invoker::new(
        invoke,
        store.clone(),
        view.clone(),
        as_link,
        audit,
        manager.clone(),
        pipelines,
    );
    Bed {
        store,
        view,
        link,
        invoker,
        jobs: manager,
        stop,
    }
}

impl Bed {
    /// Registers `agent` (game "g", env "e") providing `functions`, answering with `script`.
    pub async fn agent(
        &self,
        agent: &str,
        functions: &[&str],
        script: impl Fn(&Invoke) -> Reply + Send + Sync + 'static,
    ) {
        let record = AgentRecord {
            agent_id: agent.into(),
            game_id: "g".into(),
            env: "e".into(),
            functions: functions
                .iter()
                .map(|f| ProvidedFunction {
                    id: f.to_string(),
                    version: String::new(),
                })
                .collect(),
            owner: "server".into(),
            ..Default::default()
        };
        let rev = self
            .store
            .put(
                &keys::agent("g", "e", agent),
                serde_json::to_vec(&record).unwrap(),
                None,
            )
            .await
            .unwrap();
        assert!(self.view.wait_for(rev, Duration::from_secs(5)).await);
        self.link.agent(agent, script);
    }

    /// Stores a descriptor (game "g", env "e").
    pub async fn descriptor(&self, d: DescriptorRecord) {
        let d = DescriptorRecord {
            game_id: "g".into(),
            env: "e".into(),
            ..d
        };
        let rev = self
            .store
            .put(
                &keys::function("g", "e", &d.id),
                serde_json::to_vec(&d).unwrap(),
                None,
            )
            .await
            .unwrap();
        assert!(self.view.wait_for(rev, Duration::from_secs(5)).await);
    }
}

/// A client identity.
pub fn client() -> Identity {
    Identity::new(Role::Client, "c1").unwrap()
}

/// A request for `function` (game "g", env "e") with `payload` and `opts`.
pub fn call(
    function: &str,
    payload: serde_json::Value,
    opts: InvokeOptions,
) -> InvokeFunctionRequest {
    InvokeFunctionRequest {
        game_id: "g".into(),
        env: "e".into(),
        function_id: function.into(),
        payload: Some(croupier_proto::json::json_to_struct(&payload)),
        options: Some(opts),
    }
}
