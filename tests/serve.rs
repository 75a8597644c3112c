//! Handler tests: `serve(cfg, listener, shutdown)` in this process on port 0, an SDK provider
//! as the agent and the SDK client as the caller, over real mTLS. Faster than the end-to-end
//! tests (no processes), slower than the unit tests (real sockets and TLS).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use croupier::certs::{CertsInit, init};
use croupier::config::ServerConfig;
use croupier_sdk::proto::common::v1::FunctionDescriptor;
use croupier_sdk::{Client, HandlerError, Provider, ProviderConfig, TlsFiles};
use serde_json::json;
use tokio_util::sync::CancellationToken;
use tonic::Code;

struct InProcess {
    _dir: tempfile::TempDir,
    url: String,
    certs: std::path::PathBuf,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    served: tokio::task::JoinHandle<anyhow::Result<()>>,
    agents: CancellationToken,
}

impl InProcess {
    async fn start() -> InProcess {
        InProcess::start_in(tempfile::tempdir().unwrap()).await
    }

    /// A server on the certificates and data of `dir` (made when missing).
    async fn start_in(dir: tempfile::TempDir) -> InProcess {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let certs = dir.path().join("certs");
        init(&CertsInit {
            dir: certs.clone(),
            agents: vec!["a1".into()],
            clients: vec!["c1".into()],
            admins: vec!["ops".into()],
            servers: vec![],
            hosts: vec![],
            force: false,
            ..Default::default()
        })
        .unwrap();
        let cfg = ServerConfig {
            data_dir: dir.path().join("data"),
            tls_dir: certs.clone(),
            heartbeat_interval: Duration::from_millis(500),
            ..ServerConfig::default()
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("https://{}", listener.local_addr().unwrap());
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let served = croupier_proto::task::spawn("serve", async move {
            croupier::server::serve(cfg, listener, async {
                let _ = rx.await;
            })
            .await
        });
        InProcess {
            _dir: dir,
            url,
            certs,
            stop: Some(tx),
            served,
            agents: CancellationToken::new(),
        }
    }

    async fn client(&self, stem: &str) -> Client {
        Client::connect(&self.url, &TlsFiles::from_dir(&self.certs, stem))
            .await
            .unwrap()
    }

    /// Runs agent a1 in this process with `provider`'s functions, and waits until it is online.
    async fn agent(&self, build: impl FnOnce(Provider) -> Provider) {
        let mut cfg = ProviderConfig::new(
            vec![self.url.clone()],
            "a1",
            TlsFiles::from_dir(&self.certs, "agent-a1"),
        );
        cfg.game_id = "g".into();
        cfg.env = "e".into();
        let provider = build(Provider::new(cfg));
        let stop = self.agents.clone();
        croupier_proto::task::spawn("agent", async move { provider.run(stop).await });
        let c = self.client("client-c1").await;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !c
            .agents("g", "e")
            .await
            .unwrap()
            .iter()
            .any(|a| a.agent_id == "a1" && a.online)
        {
            assert!(
                tokio::time::Instant::now() < deadline,
                "a1 never came online"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops the agent, then the server; returns what serve returned and the directory.
    async fn stop_keeping(mut self) -> (anyhow::Result<()>, tempfile::TempDir) {
        self.agents.cancel();
        let _ = self.stop.take().unwrap().send(());
        let served = tokio::time::timeout(Duration::from_secs(30), &mut self.served)
            .await
            .expect("serve returned within its grace")
            .unwrap();
        (served, self._dir)
    }

    /// Stops the agent, then the server, and returns what serve returned.
    async fn stop(self) -> anyhow::Result<()> {
        self.stop_keeping().await.0
    }
}

fn opts() -> croupier_sdk::CallOptions {
    croupier_sdk::CallOptions::new().game("g").env("e")
}

fn descriptor(id: &str) -> FunctionDescriptor {
    FunctionDescriptor {
        id: id.into(),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_answers_calls_and_returns_when_told_to_stop() {
    let s = InProcess::start().await;
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = calls.clone();
    s.agent(move |p| {
        p.function(descriptor("echo"), move |call| {
            counted.fetch_add(1, Ordering::SeqCst);
            async move { Ok::<_, HandlerError>(json!({ "got": call.payload })) }
        })
    })
    .await;
    let c = s.client("client-c1").await;
    let r = c.invoke("echo", json!({"n": 7}), &opts()).await.unwrap();
    assert!(r.success, "{r:?}");
    assert_eq!(
        croupier_proto::json::opt_struct_to_json(r.result.as_ref()),
        json!({"got": {"n": 7}})
    );
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    s.stop().await.expect("serve ends cleanly");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_failure_is_success_false_and_a_gone_function_is_not_found() {
    let s = InProcess::start().await;
    s.agent(|p| {
        p.function(descriptor("fails"), |_| async {
            Err::<serde_json::Value, _>(HandlerError::new("NO_SUCH_PLAYER", "player p9 is unknown"))
        })
    })
    .await;
    let c = s.client("client-c1").await;
    let r = c.invoke("fails", json!({}), &opts()).await.unwrap();
    assert!(!r.success);
    assert_eq!(r.error_code, "NO_SUCH_PLAYER");
    assert_eq!(r.error, "player p9 is unknown");
    let e = c.invoke("nope", json!({}), &opts()).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    // An admin deletes the descriptor; the agent still serves the function.
    let admin = s.client("admin-ops").await;
    assert!(admin.delete_function("g", "e", "fails").await.unwrap());
    let r = c.invoke("fails", json!({}), &opts()).await.unwrap();
    assert_eq!(r.error_code, "NO_SUCH_PLAYER");
    s.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_runs_to_its_end_and_serve_stops_after_storing_it() {
    let s = InProcess::start().await;
    s.agent(|p| {
        p.job(descriptor("count"), |job| async move {
            for i in 1..=3 {
                job.progress(i as f64 / 3.0, format!("{i}/3")).await;
            }
            Ok::<_, HandlerError>(json!({"counted": 3}))
        })
    })
    .await;
    let c = s.client("client-c1").await;
    let handle = c.start_job("count", json!({}), &opts()).await.unwrap();
    let record = handle.wait().await.unwrap();
    assert_eq!(record.status, "completed");
    let id = handle.id().to_string();
    drop((handle, c));
    let (served, dir) = s.stop_keeping().await;
    served.unwrap();
    // serve returned after the writer's last flush: a server on the same data has the job.
    let again = InProcess::start_in(dir).await;
    let job = again.client("client-c1").await.get_job(&id).await.unwrap();
    assert_eq!(
        (job.status.as_str(), job.last_seq),
        ("completed", 5),
        "{job:?}"
    );
    again.stop().await.unwrap();
}

impl InProcess {
    /// A raw channel with `stem`'s certificate, for the generated clients.
    async fn channel(&self, stem: &str) -> tonic::transport::Channel {
        let pem = TlsFiles::from_dir(&self.certs, stem).load().unwrap();
        croupier_sdk::tls::connect(&self.url, &pem).await.unwrap()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflection_answers_in_v1_and_v1alpha() {
    use tonic_reflection::pb::{v1, v1alpha};
    let s = InProcess::start().await;
    let ch = s.channel("client-c1").await;
    let mut alpha = v1alpha::server_reflection_client::ServerReflectionClient::new(ch.clone());
    let req = v1alpha::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(
            v1alpha::server_reflection_request::MessageRequest::ListServices(String::new()),
        ),
    };
    let mut answers = alpha
        .server_reflection_info(futures::stream::iter([req]))
        .await
        .expect("v1alpha reflection is served")
        .into_inner();
    let answer = answers.message().await.unwrap().unwrap();
    let Some(v1alpha::server_reflection_response::MessageResponse::ListServicesResponse(list)) =
        answer.message_response
    else {
        panic!("not a service list: {answer:?}");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    assert!(
        names.contains(&"croupier.function.v1.FunctionService".to_string()),
        "{names:?}"
    );
    let mut v1 = v1::server_reflection_client::ServerReflectionClient::new(ch);
    let req = v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(v1::server_reflection_request::MessageRequest::ListServices(
            String::new(),
        )),
    };
    let mut answers = v1
        .server_reflection_info(futures::stream::iter([req]))
        .await
        .expect("v1 reflection is served")
        .into_inner();
    assert!(answers.message().await.unwrap().is_some());
    s.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gzip_requests_are_accepted_and_answered_compressed() {
    use croupier_proto::function::v1 as pb;
    use tonic::codec::CompressionEncoding::Gzip;
    let s = InProcess::start().await;
    s.agent(|p| {
        p.function(descriptor("echo"), |call| async move {
            Ok::<_, HandlerError>(json!({ "got": call.payload }))
        })
    })
    .await;
    let mut fc =
        pb::function_service_client::FunctionServiceClient::new(s.channel("client-c1").await)
            .send_compressed(Gzip)
            .accept_compressed(Gzip);
    let big = "x".repeat(200_000);
    let resp = fc
        .invoke_function(pb::InvokeFunctionRequest {
            function_id: "echo".into(),
            game_id: "g".into(),
            env: "e".into(),
            payload: Some(croupier_proto::json::json_to_struct(&json!({ "s": big }))),
            ..Default::default()
        })
        .await
        .expect("a gzip request is served");
    assert_eq!(
        resp.metadata()
            .get("grpc-encoding")
            .and_then(|v| v.to_str().ok()),
        Some("gzip"),
        "the answer is compressed for a client that accepts gzip"
    );
    let r = resp.into_inner();
    assert!(r.success, "{r:?}");
    let got = croupier_proto::json::opt_struct_to_json(r.result.as_ref());
    assert_eq!(got["got"]["s"].as_str().map(str::len), Some(200_000));

    // The SDK's client with gzip on (`--gzip` in the CLI): the same call, compressed both ways.
    let sdk = croupier_sdk::Client::from_channel(s.channel("client-c1").await).with_gzip();
    let opts = croupier_sdk::CallOptions {
        game_id: "g".into(),
        env: "e".into(),
        ..Default::default()
    };
    let r = sdk
        .invoke("echo", json!({ "s": "y".repeat(100_000) }), &opts)
        .await
        .expect("the SDK's gzip request is served");
    let got = croupier_proto::json::opt_struct_to_json(r.result.as_ref());
    assert_eq!(got["got"]["s"].as_str().map(str::len), Some(100_000));
    s.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_carry_error_info_with_a_machine_code_and_a_near_name() {
    use croupier_proto::function::v1 as pb;
    let s = InProcess::start().await;
    s.agent(|p| {
        p.function(descriptor("player.kick"), |_| async {
            Ok::<_, HandlerError>(json!({}))
        })
    })
    .await;
    let mut fc =
        pb::function_service_client::FunctionServiceClient::new(s.channel("client-c1").await);
    let err = fc
        .invoke_function(pb::InvokeFunctionRequest {
            function_id: "player.kik".into(),
            game_id: "g".into(),
            env: "e".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let info = croupier_proto::status::error_info(&err).expect("the status has ErrorInfo");
    assert_eq!(info.code, "FUNCTION_NOT_FOUND");
    assert_eq!(info.details["function"], "player.kik");
    assert_eq!(info.details["game"], "g");
    assert_eq!(info.details["did_you_mean"], "player.kick");
    assert!(
        err.message().contains("(did you mean player.kick?)"),
        "{}",
        err.message()
    );
    // The standard model too, for clients that know only google.rpc.ErrorInfo.
    let details = tonic_types::StatusExt::get_error_details(&err);
    let google = details.error_info().expect("google.rpc.ErrorInfo");
    assert_eq!(google.reason, "FUNCTION_NOT_FOUND");
    assert_eq!(google.domain, "croupier");
    s.stop().await.unwrap();
}
