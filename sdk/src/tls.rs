//! mTLS material and channels. Every connection presents a client certificate and trusts only
//! the Croupier CA.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

/// Paths of the CA certificate and of this party's certificate and key.
#[derive(Clone, Debug)]
pub struct TlsFiles {
    /// CA certificate (PEM).
    pub ca: PathBuf,
    /// Certificate (PEM).
    pub cert: PathBuf,
    /// Private key (PEM).
    pub key: PathBuf,
}

impl TlsFiles {
    /// `DIR/ca.pem`, `DIR/STEM.pem`, `DIR/STEM.key` — the layout `croupier certs init` writes.
    pub fn from_dir(dir: &Path, stem: &str) -> Self {
        TlsFiles {
            ca: dir.join("ca.pem"),
            cert: dir.join(format!("{stem}.pem")),
            key: dir.join(format!("{stem}.key")),
        }
    }

    /// Reads the files into PEM strings.
    pub fn load(&self) -> Result<TlsPem, TlsError> {
        let read =
            |p: &Path| std::fs::read_to_string(p).map_err(|e| TlsError::Read(p.to_path_buf(), e));
        Ok(TlsPem {
            ca: read(&self.ca)?,
            cert: read(&self.cert)?,
            key: read(&self.key)?,
        })
    }
}

/// mTLS material in memory (for [`Client::connect_pem`](crate::Client::connect_pem), e.g. from a
/// secret store).
#[derive(Clone)]
pub struct TlsPem {
    /// CA certificate (PEM).
    pub ca: String,
    /// Certificate (PEM).
    pub cert: String,
    /// Private key (PEM).
    pub key: String,
}

impl TlsPem {
    /// The CA certificate, this party's certificate and its private key, all PEM.
    pub fn new(ca: impl Into<String>, cert: impl Into<String>, key: impl Into<String>) -> Self {
        TlsPem {
            ca: ca.into(),
            cert: cert.into(),
            key: key.into(),
        }
    }
}

impl std::fmt::Debug for TlsPem {
    /// Shows the sizes only: the key is a secret.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsPem")
            .field("ca", &format_args!("{} bytes", self.ca.len()))
            .field("cert", &format_args!("{} bytes", self.cert.len()))
            .field("key", &"<redacted>")
            .finish()
    }
}

/// TLS setup failures.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("reading {0}: {1} (make certificates with `croupier certs init`)")]
    Read(PathBuf, std::io::Error),
    /// The server address is not a URL.
    #[error("server address {0:?} is not valid: {1}")]
    Address(String, String),
    /// The channel could not be set up or connect.
    #[error("connecting to {0}: {1}")]
    Connect(String, String),
}

/// Builds an endpoint for `server` ("https://host:port", or "host:port") with mTLS.
pub fn endpoint(server: &str, pem: &TlsPem) -> Result<Endpoint, TlsError> {
    let url = if server.contains("://") {
        server.to_string()
    } else {
        format!("https://{server}")
    };
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&pem.ca))
        .identity(Identity::from_pem(&pem.cert, &pem.key));
    Endpoint::from_shared(url.clone())
        .map_err(|e| TlsError::Address(server.to_string(), e.to_string()))?
        .tls_config(tls)
        .map_err(|e| TlsError::Address(server.to_string(), e.to_string()))
        .map(|e| {
            e.connect_timeout(Duration::from_secs(5))
                .tcp_nodelay(true)
                // As the server: a connection that carried anything for 30 s is not pinged,
                // so an agent's heartbeats (every 15 s by default) cost the server no pings.
                .http2_keep_alive_interval(Duration::from_secs(30))
                .keep_alive_timeout(Duration::from_secs(10))
                .keep_alive_while_idle(true)
        })
}

/// Connects to `server` with mTLS.
pub async fn connect(server: &str, pem: &TlsPem) -> Result<Channel, TlsError> {
    endpoint(server, pem)?
        .connect()
        .await
        .map_err(|e| TlsError::Connect(server.to_string(), error_chain(&e)))
}

/// Formats an error with its sources ("a: b: c"), so TLS failures say why.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let m = c.to_string();
        if !s.contains(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
        cur = c.source();
    }
    s
}
