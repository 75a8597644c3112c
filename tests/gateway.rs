//! End-to-end: `croupier gateway` processes in front of a real mesh (`croupier server`, a
//! backend agent), with game clients speaking the framing of
//! `proto/croupier/gateway/v1/gateway.proto`.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::Mesh;
use common::gateway::*;
use croupier_gateway::client::{
    ClientConfig, ClientError, ClientTls, Connection, Event, GameClient,
};
use croupier_gateway::frame;
use croupier_proto::gateway::v1::{CloseReason, FrameType};
use croupier_sdk::CallOptions;
use serde_json::json;

const HB: Duration = Duration::from_millis(500);

fn opts() -> CallOptions {
    common::opts()
}

async fn mesh_with(extra_agents: &[&str]) -> (Mesh, Backend) {
    let mut agents = vec!["gw-1", "gw-2", "backend"];
    agents.extend_from_slice(extra_agents);
    let mesh = Mesh::start(&agents, HB);
    let backend = Backend::start(&mesh).await;
    (mesh, backend)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_with_good_and_bad_tokens() {
    let (mesh, backend) = mesh_with(&[]).await;
    let gw = start_gateway(&mesh, "gw-1", &[], &[]);

    let (_c, ok) = login(&gw.addr, "alice").await;
    assert_eq!(ok.player_id, "alice");
    assert_eq!(ok.gateway_id, "gw-1");
    assert!(!ok.resumed);
    assert!(!ok.session_id.is_empty());

    // A token signed with another key.
    let forged = croupier_gateway::auth::sign(
        b"not-the-key",
        &croupier_gateway::auth::Claims {
            sub: "mallory".into(),
            exp: croupier_gateway::auth::now_unix() + 60,
            attrs: Default::default(),
        },
    );
    let mut c = Connection::connect(&gw.addr, None).await.unwrap();
    match c.login(&forged, "", 0, "test").await {
        Err(ClientError::Closed { reason, message }) => {
            assert_eq!(reason, CloseReason::Unauthenticated);
            assert!(message.contains("bad signature"), "{message}");
        }
        other => panic!("a forged token must be refused: {other:?}"),
    }
    // Nothing is served before LOGIN.
    let mut c = Connection::connect(&gw.addr, None).await.unwrap();
    request(&mut c, ECHO, 1, json!({})).await;
    let (reason, message) = closed(&mut c).await;
    assert_eq!(reason, CloseReason::ProtocolError);
    assert!(message.contains("LOGIN"), "{message}");

    // Mesh verification (auth.verify on the backend decides), over TLS this time.
    let certs = mesh.certs();
    let (cert, key) = (certs.join("server.pem"), certs.join("server.key"));
    let tls_flags = [
        "--auth",
        "mesh",
        "--client-tls-cert",
        cert.to_str().unwrap(),
        "--client-tls-key",
        key.to_str().unwrap(),
    ];
    let gw2 = start_gateway(&mesh, "gw-2", &tls_flags, &[]);
    let tls = ClientTls::from_ca_file(&certs.join("ca.pem"), "localhost").unwrap();
    let mut c = Connection::connect(&gw2.addr, Some(&tls)).await.unwrap();
    let ok = c.login("good-bob", "", 0, "test").await.unwrap();
    assert_eq!(ok.player_id, "bob");
    assert!(
        Connection::connect(&gw2.addr, None)
            .await
            .unwrap()
            .login("good-bob", "", 0, "test")
            .await
            .is_err(),
        "plain TCP to a TLS listener fails"
    );
    let mut c = Connection::connect(&gw2.addr, Some(&tls)).await.unwrap();
    match c.login("bad-bob", "", 0, "test").await {
        Err(ClientError::Closed { reason, message }) => {
            assert_eq!(reason, CloseReason::Unauthenticated);
            assert!(message.contains("BAD_TOKEN"), "{message}");
        }
        other => panic!("auth.verify refused it: {other:?}"),
    }
    backend.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_is_answered_by_a_mesh_function() {
    let (mesh, backend) = mesh_with(&[]).await;
    let gw = start_gateway(&mesh, "gw-1", &[], &[]);
    let (mut c, ok) = login(&gw.addr, "alice").await;

    let mut f = frame::message(
        FrameType::Request,
        ECHO,
        1,
        frame::FLAG_JSON,
        Bytes::from(r#"{"move":"e4"}"#),
    );
    f.traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into();
    c.send(&f).await.unwrap();
    let r = until(&mut c, FrameType::Response).await;
    assert_eq!((r.msg_id, r.seq), (ECHO, 1));
    assert_eq!(
        json_of(&r),
        json!({"player_id": "alice", "session_id": ok.session_id, "seq": 1,
               "gateway_id": "gw-1", "data": {"move": "e4"}})
    );

    // Opaque bytes, gzip-compressed on the way in, come back as bytes.
    let body = vec![7u8; 4096];
    let f = frame::message(
        FrameType::Request,
        ECHO,
        2,
        frame::FLAG_GZIP,
        frame::deflate(&body),
    );
    c.send(&f).await.unwrap();
    let r = until(&mut c, FrameType::Response).await;
    assert_eq!((r.seq, r.flags, &r.payload[..]), (2, 0, &body[..]));

    // A handler failure and an unknown route are ERROR frames; the session goes on.
    request(&mut c, ECHO, 3, json!({"fail": true})).await;
    let e = until(&mut c, FrameType::Error).await;
    let err = e.error.unwrap();
    assert_eq!((e.seq, err.code.as_str()), (3, "NO_SUCH_MOVE"));
    assert_eq!(err.message, "the move is not allowed");
    request(&mut c, 77, 4, json!({})).await;
    let e = until(&mut c, FrameType::Error).await;
    assert_eq!(e.seq, 4);
    assert_eq!(e.error.unwrap().message, "no route for message id 77");
    request(&mut c, ECHO, 5, json!({"again": 1})).await;
    let r = until(&mut c, FrameType::Response).await;
    assert_eq!(json_of(&r)["data"], json!({"again": 1}));

    // The client library does the same with seq bookkeeping of its own.
    let (client, _events) = GameClient::connect(ClientConfig::new(&gw.addr, &token("carol")))
        .await
        .unwrap();
    let v = client.request_json(ECHO, &json!({"n": 1})).await.unwrap();
    assert_eq!(
        (v["player_id"].clone(), v["data"].clone()),
        (json!("carol"), json!({"n": 1}))
    );

    let metrics = http(&gw.http, "GET", "/metrics", None, "").1;
    assert!(
        metrics.contains(r#"croupier_gateway_requests_total{route="game.echo",outcome="ok"}"#),
        "{metrics}"
    );
    assert!(metrics.contains("croupier_gateway_request_duration_seconds_bucket"));
    assert_eq!(http(&gw.http, "GET", "/readyz", None, "").0, 200);
    backend.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_reaches_a_player_from_another_process_and_over_http() {
    let (mesh, backend) = mesh_with(&[]).await;
    let gw = start_gateway(&mesh, "gw-1", &[], &[]);
    let (mut c, _) = login(&gw.addr, "alice").await;

    // `croupier invoke` is another process on the mesh.
    let out = std::process::Command::new(common::bin())
        .args([
            "invoke",
            "gateway.push",
            "--game-id",
            "g",
            "--env",
            "e",
            "--json",
        ])
        .args([
            "--payload",
            r#"{"player_id":"alice","msg_id":500,"data":{"gold":10}}"#,
        ])
        .args(["--server", &mesh.url, "--tls-dir"])
        .arg(mesh.certs())
        .args(["--identity", "client-c1"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let result: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(result["result"]["sent"], 1, "{result}");
    assert_eq!(result["result"]["deliveries"]["alice"]["gateway"], "gw-1");
    let p = until(&mut c, FrameType::Push).await;
    assert_eq!((p.msg_id, p.seq), (500, 1));
    assert_eq!(json_of(&p), json!({"gold": 10}));
    c.send(&frame::bare(FrameType::Ack, 1)).await.unwrap();

    // The HTTP endpoint needs the bearer token.
    let body = r#"{"player_id":"alice","msg_id":501,"data":"hi"}"#;
    let (status, _) = http(&gw.push, "POST", "/v1/push", None, body);
    assert_eq!(status, 401);
    let (status, _) = http(&gw.push, "POST", "/v1/push", Some("wrong"), body);
    assert_eq!(status, 401);
    let (status, answer) = http(&gw.push, "POST", "/v1/push", Some(PUSH_TOKEN), body);
    assert_eq!(status, 200, "{answer}");
    let p = until(&mut c, FrameType::Push).await;
    assert_eq!((p.msg_id, p.seq), (501, 2));
    assert_eq!(json_of(&p), json!("hi"));
    let (status, answer) = http(&gw.push, "POST", "/v1/push", Some(PUSH_TOKEN), "{}");
    assert_eq!(status, 400, "{answer}");

    // A broadcast by attribute filter, and the session listing.
    let r = invoke(
        &mesh,
        "gateway.broadcast",
        json!({"msg_id": 502, "data": 1}),
        opts(),
    )
    .await;
    assert_eq!(r["sent"], 1);
    assert_eq!(until(&mut c, FrameType::Push).await.msg_id, 502);
    let r = invoke(&mesh, "gateway.sessions", json!({"list": true}), opts()).await;
    assert_eq!(
        (r["online"].clone(), r["total"].clone()),
        (json!(1), json!(1))
    );
    assert_eq!(r["sessions"][0]["player_id"], "alice");
    backend.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_pushes_are_delivered_on_reconnect_in_order_once() {
    let (mesh, backend) = mesh_with(&[]).await;
    let gw = start_gateway(&mesh, "gw-1", &[], &[]);
    let (mut c, ok) = login(&gw.addr, "alice").await;
    c.send(&frame::close(CloseReason::Normal, "bye"))
        .await
        .unwrap();
    drop(c);
    eventually("alice offline", Duration::from_secs(10), || async {
        invoke(&mesh, "gateway.sessions", json!({}), opts()).await["online"] == 0
    })
    .await;
    for i in 1..=3 {
        let r = invoke(
            &mesh,
            "gateway.push",
            json!({"player_id": "alice", "msg_id": 600, "data": {"n": i}}),
            opts(),
        )
        .await;
        assert_eq!(r["queued"], 1, "{r}");
    }

    // Resume: all three, in order; acknowledge only the first two.
    let (mut c, again) = login_resume(&gw.addr, "alice", &ok.session_id, 0).await;
    assert!(again.resumed);
    assert_eq!(again.session_id, ok.session_id);
    for i in 1..=3u64 {
        let p = until(&mut c, FrameType::Push).await;
        assert_eq!((p.seq, json_of(&p)["n"].as_u64()), (i, Some(i)));
    }
    c.send(&frame::bare(FrameType::Ack, 2)).await.unwrap();
    c.send(&frame::bare(FrameType::Ping, 1)).await.unwrap();
    until(&mut c, FrameType::Pong).await;
    drop(c);

    // Resume after seq 2: only the third comes again.
    let (mut c, _) = login_resume(&gw.addr, "alice", &ok.session_id, 2).await;
    let p = until(&mut c, FrameType::Push).await;
    assert_eq!(p.seq, 3);
    c.send(&frame::bare(FrameType::Ack, 3)).await.unwrap();
    drop(c);

    // Everything acknowledged: nothing comes before the PONG.
    let (mut c, _) = login_resume(&gw.addr, "alice", &ok.session_id, 3).await;
    c.send(&frame::bare(FrameType::Ping, 9)).await.unwrap();
    let f = next(&mut c).await.unwrap();
    assert_eq!((f.r#type, f.seq), (FrameType::Pong as i32, 9), "{f:?}");

    // The client library hands each push over once, across its own reconnects.
    let (client, mut events) = GameClient::connect(ClientConfig::new(&gw.addr, &token("bob")))
        .await
        .unwrap();
    assert!(matches!(events.recv().await, Some(Event::Connected { .. })));
    client.close().await;
    for i in 1..=2 {
        invoke(
            &mesh,
            "gateway.push",
            json!({"player_id": "bob", "msg_id": 7, "data": i}),
            opts(),
        )
        .await;
    }
    let (client, mut events) = GameClient::connect(ClientConfig::new(&gw.addr, &token("bob")))
        .await
        .unwrap();
    let mut got = Vec::new();
    while got.len() < 2 {
        match tokio::time::timeout(Duration::from_secs(10), events.recv())
            .await
            .unwrap()
        {
            Some(Event::Push { seq, payload, .. }) => got.push((seq, payload)),
            Some(_) => {}
            None => panic!("events ended"),
        }
    }
    assert_eq!(got, [(1, Bytes::from("1")), (2, Bytes::from("2"))]);
    assert_eq!(client.last_seq(), 2);
    backend.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_login_replaces_the_first() {
    let (mesh, backend) = mesh_with(&[]).await;
    let gw = start_gateway(&mesh, "gw-1", &[], &[]);
    let (mut first, ok1) = login(&gw.addr, "alice").await;
    let (mut second, ok2) = login(&gw.addr, "alice").await;
    assert_eq!(
        ok2.session_id, ok1.session_id,
        "the session is the player's"
    );
    assert!(ok2.resumed);
    let (reason, _) = closed(&mut first).await;
    assert_eq!(reason, CloseReason::Replaced);
    assert!(
        next(&mut first).await.is_none(),
        "the old connection is closed"
    );
    request(&mut second, ECHO, 1, json!({"still": "here"})).await;
    let r = until(&mut second, FrameType::Response).await;
    assert_eq!(json_of(&r)["data"], json!({"still": "here"}));
    let r = invoke(&mesh, "gateway.sessions", json!({}), opts()).await;
    assert_eq!(
        (r["online"].clone(), r["total"].clone()),
        (json!(1), json!(1))
    );
    backend.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_session_is_cleaned() {
    let (mesh, backend) = mesh_with(&[]).await;
    let gw = start_gateway(
        &mesh,
        "gw-1",
        &["--idle-timeout", "1s"],
        &[
            ("CROUPIER_GATEWAY_SWEEP_INTERVAL", "100ms"),
            ("CROUPIER_GATEWAY_OFFLINE__RETENTION", "1s"),
        ],
    );
    let (mut c, _) = login(&gw.addr, "alice").await;
    // Pings keep the connection alive but are not requests: the session still goes idle.
    c.send(&frame::bare(FrameType::Ping, 1)).await.unwrap();
    let (reason, message) = closed(&mut c).await;
    assert_eq!(reason, CloseReason::Idle);
    assert!(message.contains("idle"), "{message}");
    // Then the offline session expires too.
    eventually("the session removed", Duration::from_secs(10), || async {
        invoke(&mesh, "gateway.sessions", json!({}), opts()).await["total"] == 0
    })
    .await;
    assert!(gw.log().contains("idle session closed"), "{}", gw.log());
    backend.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_frames_close_only_that_session() {
    let (mesh, backend) = mesh_with(&[]).await;
    let gw = start_gateway(&mesh, "gw-1", &[], &[]);
    let (mut good, _) = login(&gw.addr, "good").await;

    let (mut garbage, _) = login(&gw.addr, "p-garbage").await;
    garbage
        .send_raw(&[0, 0, 0, 3, 0xff, 0xff, 0xff])
        .await
        .unwrap();
    let (reason, message) = closed(&mut garbage).await;
    assert_eq!(reason, CloseReason::ProtocolError);
    assert!(message.contains("does not decode"), "{message}");

    let (mut big, _) = login(&gw.addr, "p-big").await;
    big.send_raw(&(64 * 1024 * 1024u32).to_be_bytes())
        .await
        .unwrap();
    let (reason, message) = closed(&mut big).await;
    assert_eq!(reason, CloseReason::FrameTooLarge);
    assert!(message.contains("over the limit"), "{message}");

    let (mut disorder, _) = login(&gw.addr, "p-disorder").await;
    request(&mut disorder, ECHO, 5, json!({})).await;
    request(&mut disorder, ECHO, 4, json!({})).await;
    let (reason, message) = closed(&mut disorder).await;
    assert_eq!(reason, CloseReason::ProtocolError);
    assert!(message.contains("not above the previous"), "{message}");

    let (mut liar, _) = login(&gw.addr, "p-liar").await;
    liar.send(&frame::bare(FrameType::Ack, 42)).await.unwrap();
    assert_eq!(closed(&mut liar).await.0, CloseReason::ProtocolError);

    // The well-behaved session never noticed.
    request(&mut good, ECHO, 1, json!({"ok": true})).await;
    let r = until(&mut good, FrameType::Response).await;
    assert_eq!(json_of(&r)["data"], json!({"ok": true}));
    let metrics = http(&gw.http, "GET", "/metrics", None, "").1;
    assert!(
        metrics.contains(r#"croupier_gateway_bad_frames_total{kind="decode"} 1"#),
        "{metrics}"
    );
    backend.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_shutdown_loses_no_call_in_flight() {
    let (mesh, backend) = mesh_with(&[]).await;
    let dir = tempfile::tempdir().unwrap();
    let persist = dir.path().join("queues.jsonl");
    let persist_arg = persist.to_str().unwrap();
    let mut gw = start_gateway(&mesh, "gw-1", &["--persist-path", persist_arg], &[]);
    let (mut c, _) = login(&gw.addr, "alice").await;
    for seq in 1..=5 {
        request(&mut c, SLOW, seq, json!({"ms": 1500})).await;
    }
    let started = backend.started.clone();
    eventually("five slow calls running", Duration::from_secs(10), || {
        let started = started.clone();
        async move { started.load(std::sync::atomic::Ordering::SeqCst) == 5 }
    })
    .await;
    // An offline player with a queued push, to be persisted.
    invoke(
        &mesh,
        "gateway.push",
        json!({"player_id": "bob", "msg_id": 1, "data": "kept"}),
        opts(),
    )
    .await;

    gw.proc.signal(libc::SIGTERM);
    let goaway = until(&mut c, FrameType::Goaway).await;
    assert!(goaway.close.unwrap().message.contains("shutting down"));
    // A request after GOAWAY is refused, retryable.
    request(&mut c, ECHO, 6, json!({})).await;
    let mut answered = Vec::new();
    let reason = loop {
        let f = next(&mut c).await.expect("frames until CLOSE");
        match FrameType::try_from(f.r#type).unwrap() {
            FrameType::Response => answered.push(f.seq),
            FrameType::Error => {
                let e = f.error.unwrap();
                assert_eq!(
                    (f.seq, e.code.as_str(), e.retryable),
                    (6, "UNAVAILABLE", true)
                );
            }
            FrameType::Close => break CloseReason::try_from(f.close.unwrap().reason).unwrap(),
            other => panic!("unexpected {other:?}"),
        }
    };
    answered.sort();
    assert_eq!(
        answered,
        [1, 2, 3, 4, 5],
        "every call in flight was answered"
    );
    assert_eq!(reason, CloseReason::Shutdown);
    assert_eq!(
        gw.proc.wait_exit(Duration::from_secs(20)),
        Some(0),
        "{}",
        gw.log()
    );
    mesh.wait_gone("gw-1", Duration::from_secs(10)).await;

    // The queue survived the restart.
    let gw = start_gateway(&mesh, "gw-1", &["--persist-path", persist_arg], &[]);
    let (mut b, ok) = login(&gw.addr, "bob").await;
    assert!(ok.resumed);
    let p = until(&mut b, FrameType::Push).await;
    assert_eq!((p.seq, json_of(&p)), (1, json!("kept")));
    backend.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gateways_a_push_finds_the_right_one() {
    let (mesh, backend) = mesh_with(&[]).await;
    let gw1 = start_gateway(&mesh, "gw-1", &[], &[]);
    let gw2 = start_gateway(&mesh, "gw-2", &[], &[]);
    for gw in ["gw-1", "gw-2"] {
        eventually(
            "both gateways see each other",
            Duration::from_secs(15),
            || async {
                let r = invoke(&mesh, "gateway.sessions", json!({}), opts().target(gw)).await;
                r["peers"] == json!(["gw-1", "gw-2"])
            },
        )
        .await;
    }
    let (mut alice, _) = login(&gw1.addr, "alice").await;
    let (mut bob, _) = login(&gw2.addr, "bob").await;

    // Sent to gw-1, for a player on gw-2 (and the other way round).
    let r = invoke(
        &mesh,
        "gateway.push",
        json!({"player_id": "bob", "msg_id": 1, "data": "to bob"}),
        opts().target("gw-1"),
    )
    .await;
    assert_eq!(
        r["deliveries"]["bob"],
        json!({"delivery": "sent", "gateway": "gw-2"})
    );
    assert_eq!(
        json_of(&until(&mut bob, FrameType::Push).await),
        json!("to bob")
    );
    let r = invoke(
        &mesh,
        "gateway.push",
        json!({"players": ["alice", "bob"], "msg_id": 2, "data": "both"}),
        opts().target("gw-2"),
    )
    .await;
    assert_eq!(r["sent"], 2, "{r}");
    assert_eq!(r["deliveries"]["alice"]["gateway"], "gw-1");
    assert_eq!(
        json_of(&until(&mut alice, FrameType::Push).await),
        json!("both")
    );
    assert_eq!(
        json_of(&until(&mut bob, FrameType::Push).await),
        json!("both")
    );

    // A player nobody holds is queued at their home gateway and follows them to the other.
    let r = invoke(
        &mesh,
        "gateway.push",
        json!({"player_id": "carol", "msg_id": 3, "data": "welcome"}),
        opts(),
    )
    .await;
    let home = r["deliveries"]["carol"]["gateway"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(r["queued"], 1, "{r}");
    let other = if home == "gw-1" { &gw2 } else { &gw1 };
    let (mut carol, ok) = login(&other.addr, "carol").await;
    assert!(ok.resumed, "the session came over from {home}");
    assert_eq!(ok.gateway_id, other.id);
    assert_eq!(
        json_of(&until(&mut carol, FrameType::Push).await),
        json!("welcome")
    );

    // One session per player across gateways: alice logs in on gw-2.
    let (mut alice2, _) = login(&gw2.addr, "alice").await;
    let (reason, message) = closed(&mut alice).await;
    assert_eq!(reason, CloseReason::Replaced);
    assert!(message.contains("gw-2"), "{message}");
    let r = invoke(
        &mesh,
        "gateway.push",
        json!({"player_id": "alice", "msg_id": 4, "data": "moved"}),
        opts().target("gw-1"),
    )
    .await;
    assert_eq!(r["deliveries"]["alice"]["gateway"], "gw-2");
    // The push alice never acknowledged on gw-1 came over with the session; numbering goes on.
    let replay = until(&mut alice2, FrameType::Push).await;
    assert_eq!((replay.msg_id, replay.seq), (2, 1));
    let p = until(&mut alice2, FrameType::Push).await;
    assert_eq!((p.msg_id, p.seq), (4, 2));

    // Kick from anywhere.
    let r = invoke(
        &mesh,
        "gateway.kick",
        json!({"player_id": "bob", "reason": "cheating"}),
        opts().target("gw-1"),
    )
    .await;
    assert_eq!(r, json!({"kicked": true, "gateway": "gw-2"}));
    let (reason, message) = closed(&mut bob).await;
    assert_eq!(
        (reason, message.as_str()),
        (CloseReason::Kicked, "cheating")
    );
    backend.stop().await;
}
