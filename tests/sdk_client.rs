//! End-to-end: the Rust SDK as callers and providers use it, against real `croupier server` and
//! `croupier agent` processes — typed calls and jobs, in-memory PEM, function listings, typed
//! providers whose schemas are derived from their types, retries of calls that are safe to
//! repeat (and only those), and the circuit breaker.

mod common;

use std::time::{Duration, Instant};

use common::Mesh;
use croupier_proto::common::v1::FunctionDescriptor;
use croupier_proto::function::v1::{EventType, JobEvent, RegisterFunctionRequest};
use croupier_proto::json::{json_to_struct, opt_struct_to_json, struct_to_json};
use croupier_proto::registry::v1::{
    EventType as RegEventType, RegistrationEvent, WatchRegistrationsRequest,
};
use croupier_sdk::typed::{params_schema, result_schema};
use croupier_sdk::{
    BreakerPolicy, BreakerState, CallError, CallOptions, Client, HandlerError, Provider,
    ProviderConfig, RetryPolicy, TlsFiles,
};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio_util::sync::CancellationToken;
use tonic::{Code, Streaming};

const HB: Duration = Duration::from_secs(5);

/// Options for game "g", env "e", through the builder.
fn ge() -> CallOptions {
    CallOptions::new().game("g").env("e")
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Hello {
    name: String,
    round: u32,
    tags: Vec<String>,
    table: Table,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Table {
    open: bool,
    ratio: f64,
}

/// What `agent.ping` answers.
#[derive(Debug, Deserialize)]
struct Pong {
    agent_id: String,
    payload: Hello,
    calls: u64,
}

#[derive(Serialize)]
struct Countdown {
    steps: u32,
    ms: u32,
}

#[derive(Debug, Deserialize)]
struct Counted {
    agent_id: String,
    steps: u32,
}

/// Reads a job's events from the start until the stream ends.
async fn events(client: &Client, job_id: &str) -> Vec<JobEvent> {
    let mut stream = client.job_events(job_id, 0).await.unwrap();
    let mut out = Vec::new();
    loop {
        match tokio::time::timeout(Duration::from_secs(30), stream.message()).await {
            Ok(Ok(Some(e))) => out.push(e),
            Ok(Ok(None)) => return out,
            Ok(Err(s)) => panic!("job stream failed: {s:?}"),
            Err(_) => panic!("job stream stalled after {} events", out.len()),
        }
    }
}

fn kinds(events: &[JobEvent]) -> Vec<EventType> {
    events
        .iter()
        .map(|e| EventType::try_from(e.r#type).unwrap())
        .collect()
}

/// Registration events up to and including SYNCED.
async fn initial_state(mut s: Streaming<RegistrationEvent>) -> Vec<RegistrationEvent> {
    let mut out = Vec::new();
    loop {
        let ev = tokio::time::timeout(Duration::from_secs(10), s.message())
            .await
            .expect("watch stalled")
            .unwrap()
            .expect("watch ended");
        let synced = ev.r#type == RegEventType::Synced as i32;
        out.push(ev);
        if synced {
            return out;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typed_calls_jobs_listings_and_watch_through_the_sdk() {
    let mesh = Mesh::start(&["a1"], HB);
    let _a1 = mesh.agent("a1", &[]);
    mesh.wait_online(&["a1"]).await;
    // In-memory PEM, as from a secret store.
    let pem = TlsFiles::from_dir(&mesh.certs(), "client-c1")
        .load()
        .unwrap();
    let c = Client::connect_pem(&mesh.url, &pem).await.unwrap();

    // The function listing, with descriptors and what is safe to retry.
    let fns = c.functions("g", "e").await.unwrap();
    let f = |id: &str| {
        fns.iter()
            .find(|f| f.id == id)
            .unwrap_or_else(|| panic!("{id} not listed: {fns:?}"))
    };
    assert!(!f("agent.ping").safe_to_retry(), "agent.ping is a command");
    assert!(f("agent.sleep").safe_to_retry() && f("agent.sleep").is_query());
    assert!(f("agent.countdown").is_job());
    assert_eq!(f("agent.ping").online_agents().count(), 1);
    assert_eq!(f("agent.sleep").params_schema()["required"], json!(["ms"]));
    assert!(!f("agent.ping").description().is_empty());

    // A struct round-trips through agent.ping.
    let hello = Hello {
        name: "world".into(),
        round: 7,
        tags: vec!["vip".into(), "eu".into()],
        table: Table {
            open: true,
            ratio: 0.25,
        },
    };
    let pong: Pong = c
        .invoke_typed("agent.ping", &hello, &ge().target("a1"))
        .await
        .unwrap();
    assert_eq!(pong.agent_id, "a1");
    assert_eq!(pong.payload, hello);
    assert_eq!(pong.calls, 1);

    // A payload the server's schema check refuses: the gRPC variant, naming the field.
    let e = c
        .invoke_typed::<_, serde_json::Value>("agent.sleep", &json!({"ms": "soon"}), &ge())
        .await
        .unwrap_err();
    assert_eq!(e.grpc_code(), Some(Code::InvalidArgument), "{e}");
    assert!(e.to_string().contains("/ms"), "{e}");
    // A result of the wrong shape: a decode error naming the missing field.
    let e = c
        .invoke_typed::<_, Hello>("agent.ping", &hello, &ge())
        .await
        .unwrap_err();
    assert!(matches!(e, CallError::Decode { .. }), "{e:?}");
    assert!(e.to_string().contains("missing field `name`"), "{e}");
    // Not an object: refused before anything is sent.
    let e = c
        .invoke_typed::<_, Pong>("agent.ping", &[1, 2], &ge())
        .await
        .unwrap_err();
    assert!(matches!(e, CallError::Encode { .. }), "{e:?}");

    // Every call has a deadline: the client's default when the call sets none.
    let short = c.clone().with_default_timeout(Duration::from_secs(1));
    let t = Instant::now();
    let e = short
        .invoke("agent.sleep", json!({"ms": 20_000}), &ge())
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::DeadlineExceeded, "{e:?}");
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());

    // A typed job: its events, then its typed result.
    let job = c
        .start_job_typed("agent.countdown", &Countdown { steps: 3, ms: 10 }, &ge())
        .await
        .unwrap();
    let evs = events(&c, job.id()).await;
    use EventType::*;
    assert_eq!(
        kinds(&evs),
        [Start, Progress, Log, Progress, Log, Progress, Log, Done]
    );
    let counted: Counted = job.wait_typed().await.unwrap();
    assert_eq!((counted.agent_id.as_str(), counted.steps), ("a1", 3));
    // A cancelled job is a handler error CANCELLED with the reason.
    let job = c
        .start_job_typed(
            "agent.countdown",
            &Countdown {
                steps: 1000,
                ms: 50,
            },
            &ge(),
        )
        .await
        .unwrap();
    job.cancel("enough counting").await.unwrap();
    let e = job.wait_typed::<Counted>().await.unwrap_err();
    assert_eq!(e.handler_code(), Some("CANCELLED"), "{e:?}");
    assert!(e.to_string().contains("enough counting"), "{e}");

    // Watching: the initial state, then SYNCED; `watch` is the same stream.
    let filter = WatchRegistrationsRequest {
        game_id: "g".into(),
        env: "e".into(),
        function_id: "agent.ping".into(),
        ..Default::default()
    };
    let first = initial_state(c.watch_registrations(filter.clone()).await.unwrap()).await;
    let types: Vec<i32> = first.iter().map(|e| e.r#type).collect();
    assert_eq!(
        types,
        [RegEventType::Added as i32, RegEventType::Synced as i32]
    );
    assert_eq!(
        first[0].registration.as_ref().unwrap().function_id,
        "agent.ping"
    );
    let again = initial_state(c.watch(filter).await.unwrap()).await;
    assert_eq!(again.len(), 2);
}

/// A bet on a colour.
#[derive(Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct Bet {
    /// Who bets.
    player: String,
    /// Chips at stake.
    stake: u32,
    color: Color,
}

#[derive(Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
enum Color {
    Red,
    Black,
}

#[derive(Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
struct Payout {
    player: String,
    won: bool,
    chips: u64,
}

#[derive(Debug, Serialize, Deserialize, JsonSchema)]
struct Tally {
    rounds: u32,
}

#[derive(Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
struct Tallied {
    rounds: u32,
    total: u64,
}

/// A schema as it travels in a descriptor (`Struct`).
fn as_stored(schema: serde_json::Value) -> serde_json::Value {
    struct_to_json(&json_to_struct(&schema))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_typed_provider_publishes_derived_schemas_and_serves_typed_calls() {
    let mesh = Mesh::start(&["a1", "a2"], HB);
    let mut cfg = ProviderConfig::new(
        vec![mesh.url.clone()],
        "a2",
        TlsFiles::from_dir(&mesh.certs(), "agent-a2"),
    );
    cfg.game_id = "g".into();
    cfg.env = "e".into();
    let bet = FunctionDescriptor {
        description: "Places a bet.".into(),
        ..Default::default()
    };
    let tally = FunctionDescriptor {
        description: "Tallies rounds.".into(),
        ..Default::default()
    };
    let provider = Provider::new(cfg)
        .typed_function("casino.bet", bet, |bet: Bet, _call| async move {
            if bet.stake > 1000 {
                return Err(HandlerError::new(
                    "INSUFFICIENT_FUNDS",
                    format!("{} has 1000 chips", bet.player),
                ));
            }
            Ok(Payout {
                won: bet.color == Color::Red,
                chips: u64::from(bet.stake) * 2,
                player: bet.player,
            })
        })
        .typed_job("casino.tally", tally, |t: Tally, job| async move {
            for round in 1..=t.rounds {
                job.progress(
                    f64::from(round) / f64::from(t.rounds),
                    format!("round {round}"),
                )
                .await;
            }
            Ok(Tallied {
                rounds: t.rounds,
                total: u64::from(t.rounds) * 10,
            })
        });
    let mut state = provider.state();
    let stop = CancellationToken::new();
    let running = croupier_proto::task::spawn(
        "a_typed_provider_publishes_derived_schemas_and_serves_typed_calls",
        provider.run(stop.clone()),
    );
    tokio::time::timeout(Duration::from_secs(20), state.wait_for(|s| s.connected))
        .await
        .expect("provider connects")
        .unwrap();
    mesh.wait_online(&["a2"]).await;
    let c = mesh.client("client-c1").await;

    // The descriptors carry the schemas derived from the Rust types.
    let regs = c.registrations("g", "e", "casino.bet").await.unwrap();
    let d = regs.registrations[0].function_descriptor.clone().unwrap();
    assert_eq!(d.description, "Places a bet.");
    let stored = opt_struct_to_json(d.params_schema.as_ref());
    assert_eq!(stored, as_stored(params_schema::<Bet>()));
    assert_eq!(stored["properties"]["stake"]["type"], "integer");
    assert_eq!(stored["additionalProperties"], false);
    assert_eq!(
        opt_struct_to_json(d.result_schema.as_ref()),
        as_stored(result_schema::<Payout>())
    );
    let fns = c.functions("g", "e").await.unwrap();
    let tally_info = fns.iter().find(|f| f.id == "casino.tally").unwrap();
    assert!(tally_info.is_job());
    assert_eq!(
        tally_info.params_schema(),
        as_stored(params_schema::<Tally>())
    );

    // Payloads that don't fit the type are refused by the server's schema check.
    for (payload, field) in [
        (
            json!({"player": "p1", "stake": "lots", "color": "red"}),
            "/stake",
        ),
        (
            json!({"player": "p1", "stake": 5, "color": "green"}),
            "/color",
        ),
        (
            json!({"player": "p1", "stake": -5, "color": "red"}),
            "/stake",
        ),
    ] {
        let e = c
            .invoke("casino.bet", payload.clone(), &ge())
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{payload}: {e:?}");
        assert!(e.message().contains(field), "{payload}: {}", e.message());
    }
    let e = c
        .invoke("casino.bet", json!({"player": "p1", "stake": 5}), &ge())
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("color"), "{}", e.message());
    let e = c
        .invoke(
            "casino.bet",
            json!({"player": "p1", "stake": 5, "color": "red", "tip": 1}),
            &ge(),
        )
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("tip"), "{}", e.message());

    // Typed both ways.
    let payout: Payout = c
        .invoke_typed(
            "casino.bet",
            &Bet {
                player: "p1".into(),
                stake: 5,
                color: Color::Red,
            },
            &ge(),
        )
        .await
        .unwrap();
    assert_eq!(
        payout,
        Payout {
            player: "p1".into(),
            won: true,
            chips: 10
        }
    );
    // A handler failure is its own variant, with the handler's code.
    let e = c
        .invoke_typed::<_, Payout>(
            "casino.bet",
            &Bet {
                player: "p2".into(),
                stake: 5000,
                color: Color::Black,
            },
            &ge(),
        )
        .await
        .unwrap_err();
    match &e {
        CallError::Handler {
            code,
            message,
            agent_id,
            ..
        } => {
            assert_eq!(code, "INSUFFICIENT_FUNDS");
            assert_eq!(message, "p2 has 1000 chips");
            assert_eq!(agent_id, "a2");
        }
        other => panic!("expected a handler error, got {other:?}"),
    }

    // The typed job.
    let job = c
        .start_job_typed("casino.tally", &Tally { rounds: 3 }, &ge())
        .await
        .unwrap();
    let tallied: Tallied = job.wait_typed().await.unwrap();
    assert_eq!(
        tallied,
        Tallied {
            rounds: 3,
            total: 30
        }
    );
    let evs = events(&c, job.id()).await;
    assert_eq!(
        kinds(&evs)
            .iter()
            .filter(|k| **k == EventType::Progress)
            .count(),
        3
    );

    stop.cancel();
    tokio::time::timeout(Duration::from_secs(20), running)
        .await
        .expect("provider stops")
        .unwrap()
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_calls_safe_to_repeat_are_retried_while_the_agent_is_gone() {
    let mesh = Mesh::start(&["a1"], HB);
    let mut a1 = mesh.agent("a1", &[]);
    mesh.wait_online(&["a1"]).await;
    // First retry after 500 ms ±20 %, then 1 s apart: a window of about 13 s.
    let c = mesh.client("client-c1").await.with_retry_policy(
        RetryPolicy::default()
            .with_max_attempts(15)
            .with_backoff(Duration::from_millis(500), Duration::from_secs(1)),
    );

    // The agent leaves (goodbye): its functions stay known, with no agent.
    a1.signal(15);
    assert_eq!(a1.wait_exit(Duration::from_secs(10)), Some(0));
    mesh.wait_gone("a1", Duration::from_secs(5)).await;

    // agent.ping is a command: without a key it is not repeated.
    let t = Instant::now();
    let e = c.invoke("agent.ping", json!({}), &ge()).await.unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    assert!(
        t.elapsed() < Duration::from_millis(400),
        "not retried: took {:?}",
        t.elapsed()
    );

    // With a key, and a query without one, the calls wait for the agent to come back.
    let t = Instant::now();
    let keyed = croupier_proto::task::spawn(
        "only_calls_safe_to_repeat_are_retried_while_the_agent_is_gone",
        {
            let c = c.clone();
            async move {
                c.invoke(
                    "agent.ping",
                    json!({"n": 1}),
                    &ge().idempotency_key("sdk-retry-1"),
                )
                .await
            }
        },
    );
    let query = croupier_proto::task::spawn(
        "only_calls_safe_to_repeat_are_retried_while_the_agent_is_gone",
        {
            let c = c.clone();
            async move { c.invoke("agent.sleep", json!({"ms": 1}), &ge()).await }
        },
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let _a1 = mesh.agent("a1", &[]);
    let first = keyed.await.unwrap().expect("the keyed call is retried");
    assert!(first.success, "{first:?}");
    assert_eq!(first.agent_id, "a1");
    let r = query.await.unwrap().expect("the query is retried");
    assert!(r.success, "{r:?}");
    assert!(t.elapsed() >= Duration::from_millis(1500));
    assert_eq!(c.breaker_state(), BreakerState::Closed { failures: 0 });

    // The keyed call ran once: repeating the key answers with the stored response.
    let again = c
        .invoke(
            "agent.ping",
            json!({"n": 1}),
            &ge().idempotency_key("sdk-retry-1"),
        )
        .await
        .unwrap();
    assert_eq!(again.result, first.result);
    assert_eq!(opt_struct_to_json(again.result.as_ref())["calls"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_breaker_opens_when_the_server_is_unreachable_and_probes_it_back() {
    let mut mesh = Mesh::start(&["a1"], HB);
    let policy = BreakerPolicy::default()
        .with_failure_threshold(3)
        .with_open_for(Duration::from_secs(2));
    let c = mesh
        .client("client-c1")
        .await
        .with_retry_policy(RetryPolicy::none())
        .with_breaker_policy(policy);
    // A client with the defaults: 5 attempts, 5 failures open the breaker.
    let defaults = mesh.client("client-c1").await;

    // UNAVAILABLE answered by the server (a function without agents) does not count.
    let admin = mesh.client("admin-ops").await;
    admin
        .function_service()
        .register_function(RegisterFunctionRequest {
            game_id: "g".into(),
            env: "e".into(),
            function_descriptor: Some(FunctionDescriptor {
                id: "player.ban".into(),
                ..Default::default()
            }),
        })
        .await
        .unwrap();
    for _ in 0..5 {
        let e = c.invoke("player.ban", json!({}), &ge()).await.unwrap_err();
        assert_eq!(e.code(), Code::Unavailable);
        assert!(e.message().contains("no agent provides"), "{}", e.message());
    }
    assert_eq!(c.breaker_state(), BreakerState::Closed { failures: 0 });

    // The server goes away: three failures to reach it open the breaker.
    let addr = mesh.url.trim_start_matches("https://").to_string();
    let mut server = mesh.server.take().unwrap();
    server.signal(9);
    server.wait_exit(Duration::from_secs(10));
    drop(server);
    for i in 1..=3 {
        let e = c.agents("", "").await.unwrap_err();
        assert_eq!(e.code(), Code::Unavailable, "{e:?}");
        assert!(
            e.message().starts_with("cannot reach") || e.message().starts_with("connection to"),
            "{}",
            e.message()
        );
        if i < 3 {
            assert_eq!(c.breaker_state(), BreakerState::Closed { failures: i });
        }
    }
    assert!(matches!(c.breaker_state(), BreakerState::Open { .. }));
    let t = Instant::now();
    let e = c
        .invoke("agent.ping", json!({}), &ge().idempotency_key("k"))
        .await
        .unwrap_err();
    assert!(t.elapsed() < Duration::from_millis(50), "{:?}", t.elapsed());
    assert_eq!(e.code(), Code::Unavailable);
    let prefix = format!("circuit open for {} until ", mesh.url);
    assert!(e.message().starts_with(&prefix), "{}", e.message());

    // With the default policies, one call's own five attempts (a refused connection is always
    // retried: nothing was sent) open the breaker, and the next call fails fast.
    let t = Instant::now();
    let e = defaults.agents("", "").await.unwrap_err();
    assert!(e.message().starts_with("cannot reach"), "{}", e.message());
    assert!(
        t.elapsed() >= Duration::from_millis(1000),
        "four backoffs: {:?}",
        t.elapsed()
    );
    assert!(matches!(
        defaults.breaker_state(),
        BreakerState::Open { .. }
    ));
    let e = defaults.agents("", "").await.unwrap_err();
    assert!(e.message().starts_with("circuit open"), "{}", e.message());

    // The server comes back; once the interval is over, a probe closes the breaker.
    mesh.start_server(&addr);
    let deadline = Instant::now() + Duration::from_secs(10);
    while matches!(c.breaker_state(), BreakerState::Open { .. }) {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(c.breaker_state(), BreakerState::HalfOpen { probes: 0 });
    c.agents("", "")
        .await
        .expect("the probe reaches the server");
    assert_eq!(c.breaker_state(), BreakerState::Closed { failures: 0 });
}
