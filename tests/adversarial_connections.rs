//! Connections before authentication: idle and half-open connections cannot hold the server's
//! sockets or file descriptors; a client with a certificate still gets in.

mod common;

use std::io::Read;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::{Mesh, opts};
use serde_json::json;

fn addr(mesh: &Mesh) -> String {
    mesh.url.trim_start_matches("https://").to_string()
}

/// Opens `n` TCP connections that never start a TLS handshake.
fn idle_connections(addr: &str, n: usize) -> Vec<TcpStream> {
    (0..n)
        .filter_map(|_| TcpStream::connect(addr).ok())
        .collect()
}

/// True when the server closed the connection (EOF or reset); answers at once.
fn closed_by_server(mut s: &TcpStream) -> bool {
    s.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 1];
    match s.read(&mut buf) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => !matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
    }
}

async fn invoke_works(mesh: &Mesh) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let attempt = async {
            let c = mesh.client("client-c1").await;
            c.invoke("agent.ping", json!({}), &opts()).await
        };
        match tokio::time::timeout(Duration::from_secs(5), attempt).await {
            Ok(Ok(r)) if r.success => return,
            other => {
                assert!(
                    Instant::now() < deadline,
                    "a client with a certificate could not get in: {other:?}\n{}",
                    mesh.server_log()
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn idle_connections_are_closed_after_the_handshake_timeout() {
    let mesh = Mesh::start_with_env(
        &["a1"],
        Duration::from_secs(5),
        &[("CROUPIER_LIMITS__HANDSHAKE_TIMEOUT", "1s")],
    );
    let _a1 = mesh.agent("a1", &[]);
    mesh.wait_online(&["a1"]).await;
    let idle = idle_connections(&addr(&mesh), 300);
    assert_eq!(idle.len(), 300);
    invoke_works(&mesh).await;
    // Closed within the 1 s handshake timeout (and the time to check 300 sockets).
    let started = Instant::now();
    let open = loop {
        let open = idle.iter().filter(|s| !closed_by_server(s)).count();
        if open == 0 || started.elapsed() > Duration::from_secs(10) {
            break open;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(
        open, 0,
        "{open} idle connections still open after the handshake timeout"
    );
    assert!(
        mesh.server_log().contains("TLS handshake refused"),
        "{}",
        mesh.server_log()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_flood_of_idle_connections_sheds_the_oldest_and_clients_still_get_in() {
    croupier::gate::raise_fd_limit();
    let mesh = Mesh::start_with_env(
        &["a1"],
        Duration::from_secs(5),
        &[
            ("CROUPIER_LIMITS__MAX_HANDSHAKES", "200"),
            ("CROUPIER_LIMITS__MAX_HANDSHAKES_PER_SOURCE", "100"),
        ],
    );
    let _a1 = mesh.agent("a1", &[]);
    mesh.wait_online(&["a1"]).await;
    let idle = idle_connections(&addr(&mesh), 3000);
    assert!(idle.len() > 2500, "opened only {}", idle.len());
    invoke_works(&mesh).await;
    // Everything but the newest 100 (the per-source cap) was closed to make room.
    let deadline = Instant::now() + Duration::from_secs(10);
    let open = loop {
        let open = idle.iter().filter(|s| !closed_by_server(s)).count();
        if open <= 100 || Instant::now() > deadline {
            break open;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(open <= 100, "{open} idle connections still held");
    assert!(
        mesh.server_log()
            .contains("too many connections in their TLS handshake"),
        "{}",
        mesh.server_log()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_server_out_of_file_descriptors_keeps_accepting() {
    croupier::gate::raise_fd_limit();
    // 256 descriptors for the whole server, against 2000 idle connections.
    let mesh = Mesh::start_wrapped(
        &["a1"],
        Duration::from_secs(5),
        &[],
        &[],
        &["prlimit", "--nofile=256", "--"],
    );
    let _a1 = mesh.agent("a1", &[]);
    mesh.wait_online(&["a1"]).await;
    let _idle = idle_connections(&addr(&mesh), 2000);
    invoke_works(&mesh).await;
}
