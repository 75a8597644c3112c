//! Docker's container events as node events: `container.start`, `container.die` (with the
//! exit code), `container.oom`, `container.health` (healthy / unhealthy), `container.restart`,
//! `container.create`, `container.destroy`, `container.pause`, `container.unpause`. Read from
//! Docker's event stream while the agent runs; after the stream breaks (Docker restarted, not
//! running yet) it is opened again with backoff from the last event's time, so nothing in
//! between is lost and nothing is reported twice.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bollard::models::EventMessage;
use croupier_proto::control::v1::NodeEvent;
use croupier_sdk::Reporter;
use croupier_sdk::backoff::Backoff;
use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use super::docker::DockerApi;
use croupier_sdk::tls::error_chain;

/// The node event for one Docker event, or None for actions not reported (exec, attach,
/// kill, …: `die` follows a kill with the exit code).
pub(crate) fn node_event(msg: &EventMessage) -> Option<NodeEvent> {
    let action = msg.action.as_deref()?;
    let actor = msg.actor.as_ref()?;
    let id = actor.id.clone().unwrap_or_default();
    let attributes = actor.attributes.clone().unwrap_or_default();
    let name = attributes.get("name").cloned().unwrap_or_default();
    let (kind, status) = match action {
        "start" => ("container.start", "running".to_string()),
        "die" => ("container.die", "exited".to_string()),
        "oom" => ("container.oom", "oom".to_string()),
        "restart" => ("container.restart", "running".to_string()),
        "create" => ("container.create", "created".to_string()),
        "destroy" => ("container.destroy", "removed".to_string()),
        "pause" => ("container.pause", "paused".to_string()),
        "unpause" => ("container.unpause", "running".to_string()),
        a if a.starts_with("health_status:") => (
            "container.health",
            a.trim_start_matches("health_status:").trim().to_string(),
        ),
        _ => return None,
    };
    let mut data: HashMap<String, String> = HashMap::new();
    for (from, to) in [
        ("image", "image"),
        ("name", "name"),
        ("exitCode", "exit_code"),
        ("croupier.job", "job_id"),
    ] {
        if let Some(v) = attributes.get(from) {
            data.insert(to.into(), v.clone());
        }
    }
    let message = match (kind, data.get("exit_code")) {
        ("container.die", Some(code)) => format!("container {name} exited with code {code}"),
        _ => format!("container {name}: {}", action.replace('_', " ")),
    };
    Some(NodeEvent {
        r#type: kind.into(),
        entity_id: id,
        status,
        message,
        timestamp: msg
            .time_nano
            .map(|n| n / 1_000_000)
            .or(msg.time.map(|s| s * 1000))
            .unwrap_or_default(),
        data,
        ..Default::default()
    })
}

/// Reports Docker's container events through `reporter` until `stop`.
pub(crate) async fn report(
    docker: Arc<dyn DockerApi>,
    reporter: Reporter,
    stop: CancellationToken,
) {
    let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(30), 0.2);
    // The last event reported (Docker's nanosecond time): the stream is opened again from
    // its second, and what was already reported is skipped.
    let mut last_nano: Option<i64> = None;
    let mut warned = false;
    loop {
        let since = last_nano.map(|n| n / 1_000_000_000);
        let opened = tokio::select! {
            _ = stop.cancelled() => return,
            s = docker.events(since) => s,
        };
        match opened {
            Ok(mut stream) => loop {
                let next = tokio::select! {
                    _ = stop.cancelled() => return,
                    n = stream.next() => n,
                };
                match next {
                    Some(Ok(msg)) => {
                        backoff.reset();
                        warned = false;
                        let nano = msg.time_nano.unwrap_or_default();
                        if last_nano.is_some_and(|last| nano <= last) {
                            continue;
                        }
                        last_nano = Some(nano);
                        if let Some(e) = node_event(&msg) {
                            reporter.event(e);
                        }
                    }
                    Some(Err(e)) => {
                        tracing::debug!(error = %error_chain(&e), "Docker event stream broke");
                        break;
                    }
                    None => break,
                }
            },
            Err(e) if !warned => {
                warned = true;
                tracing::info!(error = %error_chain(&e), "Docker events unavailable; trying again with backoff");
            }
            Err(_) => {}
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(backoff.next_delay()) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bollard::models::EventActor;

    fn msg(action: &str, attrs: &[(&str, &str)]) -> EventMessage {
        EventMessage {
            action: Some(action.into()),
            actor: Some(EventActor {
                id: Some("abc123".into()),
                attributes: Some(
                    attrs
                        .iter()
                        .map(|(k, v)| ((*k).into(), (*v).into()))
                        .collect(),
                ),
            }),
            time_nano: Some(1_700_000_000_123_000_000),
            ..Default::default()
        }
    }

    #[test]
    fn die_carries_the_exit_code_and_health_its_status() {
        let e = node_event(&msg(
            "die",
            &[("exitCode", "137"), ("name", "web"), ("image", "busybox")],
        ))
        .unwrap();
        assert_eq!(e.r#type, "container.die");
        assert_eq!(e.entity_id, "abc123");
        assert_eq!(e.status, "exited");
        assert_eq!(e.data["exit_code"], "137");
        assert_eq!(e.data["image"], "busybox");
        assert_eq!(e.message, "container web exited with code 137");
        assert_eq!(e.timestamp, 1_700_000_000_123);
        let h = node_event(&msg("health_status: unhealthy", &[("name", "web")])).unwrap();
        assert_eq!(
            (h.r#type.as_str(), h.status.as_str()),
            ("container.health", "unhealthy")
        );
        assert!(node_event(&msg("exec_start: sh", &[])).is_none());
        assert!(node_event(&msg("kill", &[])).is_none());
    }

    #[tokio::test]
    async fn events_from_docker_reach_the_reporter() {
        let fake = Arc::new(super::super::fake::Fake::default());
        fake.st().events = vec![
            msg("start", &[("name", "a")]),
            msg("die", &[("exitCode", "3")]),
        ];
        let docker: Arc<dyn DockerApi> = fake;
        let reporter = Reporter::default();
        let stop = CancellationToken::new();
        let task = croupier_proto::task::spawn(
            "test docker events",
            report(docker, reporter.clone(), stop.clone()),
        );
        // The fake's stream ends after its events; the reporter holds them (no tunnel).
        tokio::time::sleep(Duration::from_millis(200)).await;
        stop.cancel();
        task.await.unwrap();
        // Both have the same time: the second is skipped as already reported.
        assert_eq!(reporter.queued(), 1);
    }
}
