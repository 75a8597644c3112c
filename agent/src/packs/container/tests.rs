//! The handlers of the container functions and jobs, run against the fake Docker daemon.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use super::calls::{create, exec, inspect, list, remove, restart, start, stop};
use super::fake::{Fake, IMAGE, Recorder, call, ctx, decode, err, out};
use super::jobs::{CANCEL_STOP_SECS, follow_logs, run_container, short};
use super::{AGENT_LABEL, Ctx, JOB_LABEL, serve};

#[tokio::test]
async fn created_containers_carry_the_agent_label_and_reserved_labels_are_refused() {
    let fake = Fake::with_image(IMAGE);
    let r = serve(
        "container.create",
        ctx(&fake),
        call(json!({"image": IMAGE, "name": "web", "labels": {"team": "x"}, "env": {"A": "1"}})),
        create,
    )
    .await
    .unwrap();
    let id = r["id"].as_str().unwrap().to_string();
    {
        let st = fake.st();
        let labels = &st.containers[&id].labels;
        assert_eq!(labels.get(AGENT_LABEL).map(String::as_str), Some("a1"));
        assert_eq!(labels.get("team").map(String::as_str), Some("x"));
        assert!(!labels.contains_key(JOB_LABEL), "not made by a job");
    }
    let e = serve(
        "container.create",
        ctx(&fake),
        call(json!({"image": IMAGE, "labels": {"croupier.agent": "someone-else"}})),
        create,
    )
    .await
    .unwrap_err();
    assert_eq!(e.code, "INVALID_ARGUMENT");
    assert!(
        e.message.contains("\"croupier.agent\" is reserved"),
        "{}",
        e.message
    );
    // Same name again: ALREADY_EXISTS.
    let e = serve(
        "container.create",
        ctx(&fake),
        call(json!({"image": IMAGE, "name": "web"})),
        create,
    )
    .await
    .unwrap_err();
    assert_eq!(e.code, "ALREADY_EXISTS", "{e:?}");
    // Unknown image.
    let e = serve(
        "container.create",
        ctx(&fake),
        call(json!({"image": "nope/nope:1"})),
        create,
    )
    .await
    .unwrap_err();
    assert_eq!(e.code, "NOT_FOUND");
    assert!(
        e.message.starts_with("image nope/nope:1 not found locally"),
        "{}",
        e.message
    );
    // Unknown fields and bad values are refused before Docker is asked.
    let calls = fake.calls().len();
    for bad in [
        json!({"image": IMAGE, "bogus": 1}),
        json!({"image": ""}),
        json!({"image": IMAGE, "cpus": 0}),
        json!({"image": IMAGE, "env": {"A=B": "1"}}),
    ] {
        let e = serve("container.create", ctx(&fake), call(bad.clone()), create)
            .await
            .unwrap_err();
        assert_eq!(e.code, "INVALID_ARGUMENT", "{bad}: {e:?}");
    }
    assert_eq!(fake.calls().len(), calls);
}

#[tokio::test]
async fn list_filters_on_labels_and_mine() {
    let fake = Fake::with_image(IMAGE);
    let mine = serve(
        "container.create",
        ctx(&fake),
        call(json!({"image": IMAGE, "labels": {"team": "x"}})),
        create,
    )
    .await
    .unwrap();
    let theirs = Ctx {
        docker: fake.clone(),
        agent_id: "a2".into(),
    };
    serve(
        "container.create",
        theirs,
        call(json!({"image": IMAGE, "labels": {"team": "x"}})),
        create,
    )
    .await
    .unwrap();

    let r = serve(
        "container.list",
        ctx(&fake),
        call(json!({"all": true, "labels": {"team": "x"}, "mine": true})),
        list,
    )
    .await
    .unwrap();
    let found: Vec<&str> = r["containers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap())
        .collect();
    assert_eq!(found, [mine["id"].as_str().unwrap()]);
    assert_eq!(r["containers"][0]["labels"]["croupier.agent"], "a1");
    let (all, filters) = fake.st().filters.last().cloned().unwrap();
    assert!(all);
    assert_eq!(filters["label"], ["croupier.agent=a1", "team=x"]);

    // Without `all`, only running ones; without filters, no filter is sent.
    let r = serve("container.list", ctx(&fake), call(json!({})), list)
        .await
        .unwrap();
    assert_eq!(r["containers"], json!([]));
    let (all, filters) = fake.st().filters.last().cloned().unwrap();
    assert!(!all);
    assert!(filters.is_empty());
    let r = serve("container.list", ctx(&fake), call(Value::Null), list)
        .await
        .unwrap();
    assert_eq!(r["containers"], json!([]));
    let e = serve(
        "container.list",
        ctx(&fake),
        call(json!({"mine": true, "labels": {"croupier.agent": "a2"}})),
        list,
    )
    .await
    .unwrap_err();
    assert_eq!(e.code, "INVALID_ARGUMENT");
}

/// Waits up to a second for `call` to be made (by a task spawned on drop).
async fn assert_called_soon(fake: &Fake, call: &str) {
    for _ in 0..100 {
        if fake.calls().iter().any(|c| c == call) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{call} was not called: {:?}", fake.calls());
}

#[tokio::test]
async fn lifecycle_and_exec_through_the_fake() {
    let fake = Fake::with_image(IMAGE);
    let id = serve(
        "container.create",
        ctx(&fake),
        call(json!({"image": IMAGE, "name": "box"})),
        create,
    )
    .await
    .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    // exec in a container that does not run: FAILED_PRECONDITION.
    let e = serve(
        "container.exec",
        ctx(&fake),
        call(json!({"id": "box", "cmd": ["true"]})),
        exec,
    )
    .await
    .unwrap_err();
    assert_eq!(e.code, "FAILED_PRECONDITION", "{e:?}");
    serve(
        "container.start",
        ctx(&fake),
        call(json!({"id": "box"})),
        start,
    )
    .await
    .unwrap();
    let i = serve(
        "container.inspect",
        ctx(&fake),
        call(json!({"id": "box"})),
        inspect,
    )
    .await
    .unwrap();
    assert_eq!(i["id"], id);
    assert_eq!(i["name"], "box");
    assert_eq!(i["state"]["running"], true);
    assert_eq!(i["state"]["status"], "running");
    assert_eq!(i["labels"]["croupier.agent"], "a1");

    {
        let mut st = fake.st();
        st.output = vec![out("hi\n"), err("oops\n")];
        st.exit_code = 3;
    }
    let r = serve(
        "container.exec",
        ctx(&fake),
        call(json!({"id": "box", "cmd": ["sh", "-c", "x"]})),
        exec,
    )
    .await
    .unwrap();
    assert_eq!(
        r,
        json!({"id": "box", "exit_code": 3, "stdout": "hi\n", "stderr": "oops\n", "truncated": false})
    );

    // An exec whose call is dropped before the command ends (deadline, cancel) is killed;
    // one that ended is not.
    assert!(!fake.calls().iter().any(|c| c.starts_with("kill_exec")));
    fake.st().hang = true;
    let dropped = tokio::time::timeout(
        Duration::from_millis(50),
        serve(
            "container.exec",
            ctx(&fake),
            call(json!({"id": "box", "cmd": ["sleep", "300"]})),
            exec,
        ),
    )
    .await;
    assert!(dropped.is_err(), "the exec hangs until dropped");
    assert_called_soon(&fake, "kill_exec exec1").await;
    // Cancelling the call (a pipeline step) ends it CANCELLED and kills the command too.
    fake.st().calls.clear();
    let cancelled = call(json!({"id": "box", "cmd": ["sleep", "300"]}));
    let token = cancelled.cancel.clone();
    let running = croupier_proto::task::spawn(
        "lifecycle_and_exec_through_the_fake",
        serve("container.exec", ctx(&fake), cancelled, exec),
    );
    tokio::time::sleep(Duration::from_millis(20)).await;
    token.cancel();
    let e = running.await.unwrap().unwrap_err();
    assert_eq!(e.code, "CANCELLED", "{e:?}");
    assert_called_soon(&fake, "kill_exec exec1").await;
    fake.st().hang = false;

    // Removing a running container needs force.
    let e = serve(
        "container.remove",
        ctx(&fake),
        call(json!({"id": "box"})),
        remove,
    )
    .await
    .unwrap_err();
    assert_eq!(e.code, "FAILED_PRECONDITION");
    let e = serve(
        "container.stop",
        ctx(&fake),
        call(json!({"id": "box", "timeout": 301})),
        stop,
    )
    .await
    .unwrap_err();
    assert_eq!(e.code, "INVALID_ARGUMENT");
    serve(
        "container.stop",
        ctx(&fake),
        call(json!({"id": "box", "timeout": 1})),
        stop,
    )
    .await
    .unwrap();
    serve(
        "container.restart",
        ctx(&fake),
        call(json!({"id": "box"})),
        restart,
    )
    .await
    .unwrap();
    serve(
        "container.remove",
        ctx(&fake),
        call(json!({"id": "box", "force": true})),
        remove,
    )
    .await
    .unwrap();
    assert!(fake.st().containers.is_empty());
    assert!(fake.calls().contains(&"stop box Some(1)".to_string()));
    let e = serve(
        "container.inspect",
        ctx(&fake),
        call(json!({"id": "box"})),
        inspect,
    )
    .await
    .unwrap_err();
    assert_eq!(e.code, "NOT_FOUND");
    assert!(
        e.message.starts_with("no such container box"),
        "{}",
        e.message
    );
}

#[tokio::test]
async fn docker_down_answers_unavailable() {
    let fake = Fake::with_image(IMAGE);
    fake.st().down = true;
    let e = serve("container.list", ctx(&fake), call(json!({})), list)
        .await
        .unwrap_err();
    assert_eq!(e.code, "UNAVAILABLE");
    assert!(
        e.message.starts_with("Docker is not running ("),
        "{}",
        e.message
    );
    let rec = Recorder::default();
    let e = run_container(
        &ctx(&fake),
        decode(json!({"image": IMAGE})),
        "j1",
        &CancellationToken::new(),
        &rec,
    )
    .await
    .unwrap_err();
    assert_eq!(e.code, "UNAVAILABLE");
}

#[tokio::test]
async fn run_streams_lines_labels_the_job_and_reports_the_exit_code() {
    let fake = Fake::with_image(IMAGE);
    {
        let mut st = fake.st();
        st.output = vec![out("hello\n"), err("err\n"), out("bye")];
        st.exit_code = 3;
    }
    let rec = Recorder::default();
    let r = run_container(
        &ctx(&fake),
        decode(json!({"image": IMAGE, "cmd": ["sh", "-c", "exit 3"], "remove": false})),
        "job-1",
        &CancellationToken::new(),
        &rec,
    )
    .await
    .unwrap();
    assert_eq!(r.exit_code, 3);
    assert_eq!(r.lines, 3);
    assert!(!r.removed);
    assert_eq!(
        rec.lines(),
        [
            ("stdout".to_string(), "hello".to_string()),
            ("stderr".to_string(), "err".to_string()),
            ("stdout".to_string(), "bye".to_string()),
        ]
    );
    let id = r.id.as_str();
    {
        let st = fake.st();
        let labels = &st.containers[id].labels;
        assert_eq!(labels[AGENT_LABEL], "a1");
        assert_eq!(labels[JOB_LABEL], "job-1");
    }
    // By default the container is removed once it ended.
    let r = run_container(
        &ctx(&fake),
        decode(json!({"image": IMAGE})),
        "job-2",
        &CancellationToken::new(),
        &rec,
    )
    .await
    .unwrap();
    assert!(r.removed);
    assert!(!fake.st().containers.contains_key(&r.id));
    // An unknown image: NOT_FOUND, and nothing was created.
    let e = run_container(
        &ctx(&fake),
        decode(json!({"image": "nope:1"})),
        "job-3",
        &CancellationToken::new(),
        &rec,
    )
    .await
    .unwrap_err();
    assert_eq!(e.code, "NOT_FOUND");
    assert_eq!(fake.st().containers.len(), 1);
}

#[tokio::test]
async fn cancelling_run_stops_and_removes_the_container() {
    let fake = Fake::with_image(IMAGE);
    {
        let mut st = fake.st();
        st.output = vec![out("started\n")];
        st.hang = true;
    }
    let cancel = CancellationToken::new();
    let rec = Arc::new(Recorder::default());
    let task = {
        let (fake, cancel, rec) = (fake.clone(), cancel.clone(), rec.clone());
        croupier_proto::task::spawn(
            "cancelling_run_stops_and_removes_the_container",
            async move {
                run_container(
                    &ctx(&fake),
                    decode(json!({"image": IMAGE, "cmd": ["sleep", "300"]})),
                    "job-9",
                    &cancel,
                    rec.as_ref(),
                )
                .await
            },
        )
    };
    // Wait until it streams, then cancel.
    let t = tokio::time::Instant::now();
    while rec.lines().is_empty() {
        assert!(t.elapsed() < Duration::from_secs(5), "no output streamed");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(fake.st().containers.len(), 1);
    cancel.cancel();
    let e = task.await.unwrap().unwrap_err();
    assert_eq!(e.code, "CANCELLED");
    assert!(e.message.contains("stopped and removed"), "{}", e.message);
    assert!(fake.st().containers.is_empty(), "container left behind");
    let calls = fake.calls();
    let stop_at = calls.iter().position(|c| c.starts_with("stop ")).unwrap();
    assert!(
        calls[stop_at].ends_with(&format!("Some({CANCEL_STOP_SECS})")),
        "{calls:?}"
    );
    assert!(
        calls[stop_at + 1].starts_with("remove ") && calls[stop_at + 1].contains("force=true"),
        "{calls:?}"
    );
    // The last event says what happened.
    let last = rec.events().last().cloned().unwrap();
    assert!(last.0.starts_with("cancelled: container"), "{last:?}");

    // Cancelled before it started: removed as well, never started.
    let cancel = CancellationToken::new();
    cancel.cancel();
    let e = run_container(
        &ctx(&fake),
        decode(json!({"image": IMAGE})),
        "job-10",
        &cancel,
        rec.as_ref(),
    )
    .await
    .unwrap_err();
    assert_eq!(e.code, "CANCELLED");
    assert!(fake.st().containers.is_empty());
}

#[tokio::test]
async fn a_dropped_run_still_removes_its_container() {
    let fake = Fake::with_image(IMAGE);
    fake.st().hang = true;
    let rec = Recorder::default();
    let cancel = CancellationToken::new();
    // A synchronous caller that gives up drops the handler.
    let dropped = tokio::time::timeout(
        Duration::from_millis(100),
        run_container(
            &ctx(&fake),
            decode(json!({"image": IMAGE})),
            "",
            &cancel,
            &rec,
        ),
    )
    .await;
    assert!(dropped.is_err());
    let t = tokio::time::Instant::now();
    while !fake.st().containers.is_empty() {
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "container left behind"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn logs_stream_until_the_output_ends_or_the_job_is_cancelled() {
    let fake = Fake::with_image(IMAGE);
    let id = serve(
        "container.create",
        ctx(&fake),
        call(json!({"image": IMAGE})),
        create,
    )
    .await
    .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    fake.st().output = vec![out("one\ntwo\n")];
    let rec = Recorder::default();
    let r = follow_logs(
        &ctx(&fake),
        decode(json!({"id": id})),
        &CancellationToken::new(),
        &rec,
    )
    .await
    .unwrap();
    assert_eq!(r.id, id);
    assert_eq!(r.lines, 2);
    assert_eq!(rec.lines().len(), 2);
    assert!(
        fake.calls()
            .contains(&format!("logs {} follow=true", short(&id)))
    );

    fake.st().hang = true;
    let cancel = CancellationToken::new();
    let c = cancel.clone();
    croupier_proto::task::spawn(
        "logs_stream_until_the_output_ends_or_the_job_is_cancelled",
        async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            c.cancel();
        },
    );
    let e = follow_logs(
        &ctx(&fake),
        decode(json!({"id": id, "follow": true})),
        &cancel,
        &rec,
    )
    .await
    .unwrap_err();
    assert_eq!(e.code, "CANCELLED");

    let e = follow_logs(
        &ctx(&fake),
        decode(json!({"id": "nope"})),
        &CancellationToken::new(),
        &rec,
    )
    .await
    .unwrap_err();
    assert_eq!(e.code, "NOT_FOUND");
}
