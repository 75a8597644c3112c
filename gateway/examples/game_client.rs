//! A game client: logs in to a gateway, sends one JSON request, then prints every push until
//! Ctrl-C (reconnecting and resuming by itself when the connection breaks).
//!
//! ```sh
//! TOKEN=$(croupier gateway token --key devkey --player alice)
//! cargo run -p croupier-gateway --example game_client -- 127.0.0.1:7000 "$TOKEN" 1001 '{"hello":"world"}'
//! ```
//!
//! Arguments: gateway address, token, message id, JSON body. With `CA=path/ca.pem` (and
//! `SERVER_NAME`, default `localhost`) the client speaks TLS.

use croupier_gateway::client::{ClientConfig, ClientTls, Event, GameClient};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // The TLS client uses ring, like the rest of Croupier.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [addr, token, msg_id, body] = args.as_slice() else {
        eprintln!("usage: game_client ADDR TOKEN MSG_ID JSON");
        std::process::exit(2);
    };
    let mut cfg = ClientConfig::new(addr, token);
    if let Ok(ca) = std::env::var("CA") {
        let name = std::env::var("SERVER_NAME").unwrap_or_else(|_| "localhost".into());
        cfg.tls = Some(ClientTls::from_ca_file(ca.as_ref(), &name)?);
    }
    let (client, mut events) = GameClient::connect(cfg).await?;
    let body: serde_json::Value = serde_json::from_str(body)?;
    match client.request_json(msg_id.parse()?, &body).await {
        Ok(answer) => println!("answer: {answer}"),
        Err(e) => println!("request failed: {e}"),
    }
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {
                client.close().await;
                return Ok(());
            }
            ev = events.recv() => match ev {
                Some(Event::Push { msg_id, seq, payload, .. }) => {
                    println!("push #{seq} (message {msg_id}): {}", String::from_utf8_lossy(&payload));
                }
                Some(Event::Connected { session_id, resumed, dropped, gateway_id }) => {
                    println!("connected to {gateway_id}: session {session_id} (resumed: {resumed}, dropped: {dropped})");
                }
                Some(Event::Stopped { reason, message }) => {
                    println!("stopped: {reason:?}: {message}");
                    return Ok(());
                }
                Some(other) => println!("{other:?}"),
                None => return Ok(()),
            },
        }
    }
}
