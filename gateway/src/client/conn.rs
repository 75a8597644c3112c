//! [`Connection`]: one connection to a gateway (TCP or TLS), frame by frame, with no
//! reconnect. [`super::GameClient`] builds on it; tests use it to send exactly what they mean,
//! malformed bytes included.

use std::path::Path;
use std::sync::Arc;

use bytes::BytesMut;
use croupier_proto::gateway::v1::{CloseReason, Frame, FrameType, LoginOk};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use super::ClientError;
use crate::frame;

/// A byte stream the client can use (TCP or TLS).
pub trait Io: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}

/// TLS towards the gateway: the CA to trust and the name to check.
#[derive(Clone)]
pub struct ClientTls {
    connector: TlsConnector,
    server_name: rustls::pki_types::ServerName<'static>,
}

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ClientTls({:?})", self.server_name)
    }
}

impl ClientTls {
    /// Trusts the CA in `ca_pem` (a PEM file) and expects the gateway's certificate to name
    /// `server_name` (a host name or an IP address).
    pub fn from_ca_file(ca_pem: &Path, server_name: &str) -> Result<ClientTls, ClientError> {
        let pem = std::fs::read(ca_pem)
            .map_err(|e| ClientError::Tls(format!("{}: {e}", ca_pem.display())))?;
        let mut roots = rustls::RootCertStore::empty();
        for c in rustls_pemfile::certs(&mut pem.as_slice()) {
            let c = c.map_err(|e| ClientError::Tls(format!("{}: {e}", ca_pem.display())))?;
            roots
                .add(c)
                .map_err(|e| ClientError::Tls(format!("{}: {e}", ca_pem.display())))?;
        }
        let cfg = rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let server_name = rustls::pki_types::ServerName::try_from(server_name.to_string())
            .map_err(|e| ClientError::Tls(format!("{server_name:?}: {e}")))?;
        Ok(ClientTls {
            connector: TlsConnector::from(Arc::new(cfg)),
            server_name,
        })
    }
}

/// One connection to a gateway.
pub struct Connection {
    rd: ReadHalf<Box<dyn Io>>,
    wr: WriteHalf<Box<dyn Io>>,
    max_frame_bytes: usize,
    buf: BytesMut,
}

impl Connection {
    /// Connects to `addr` (host:port), over TLS when `tls` is given.
    pub async fn connect(addr: &str, tls: Option<&ClientTls>) -> Result<Connection, ClientError> {
        let tcp = TcpStream::connect(addr)
            .await
            .map_err(|e| ClientError::Connect(format!("{addr}: {e}")))?;
        let _ = tcp.set_nodelay(true);
        let io: Box<dyn Io> = match tls {
            None => Box::new(tcp),
            Some(t) => Box::new(
                t.connector
                    .connect(t.server_name.clone(), tcp)
                    .await
                    .map_err(|e| ClientError::Connect(format!("{addr}: TLS: {e}")))?,
            ),
        };
        let (rd, wr) = tokio::io::split(io);
        Ok(Connection {
            rd,
            wr,
            max_frame_bytes: frame::DEFAULT_MAX_FRAME_BYTES,
            buf: BytesMut::new(),
        })
    }

    /// Sends one frame.
    pub async fn send(&mut self, f: &Frame) -> Result<(), ClientError> {
        self.buf.clear();
        frame::encode_into(f, &mut self.buf);
        let bytes = self.buf.split().freeze();
        self.send_raw(&bytes).await
    }

    /// Sends bytes as they are (tests use it for malformed frames).
    pub async fn send_raw(&mut self, bytes: &[u8]) -> Result<(), ClientError> {
        self.wr.write_all(bytes).await.map_err(ClientError::Io)?;
        self.wr.flush().await.map_err(ClientError::Io)
    }

    /// The next frame; `None` when the gateway closed the connection.
    pub async fn recv(&mut self) -> Result<Option<Frame>, ClientError> {
        frame::read_frame(&mut self.rd, self.max_frame_bytes)
            .await
            .map_err(|e| match e {
                crate::error::FrameError::Io(e) => ClientError::Io(e),
                e => ClientError::Protocol(e.to_string()),
            })
    }

    /// Sends LOGIN and waits for LOGIN_OK; a CLOSE instead is [`ClientError::Closed`].
    pub async fn login(
        &mut self,
        token: &str,
        session_id: &str,
        ack_seq: u64,
        client: &str,
    ) -> Result<LoginOk, ClientError> {
        self.send(&frame::login(token, session_id, ack_seq, client))
            .await?;
        loop {
            let Some(f) = self.recv().await? else {
                return Err(ClientError::Disconnected(
                    "the gateway closed the connection during login".into(),
                ));
            };
            match frame::kind(&f) {
                FrameType::LoginOk => {
                    let ok = f.login_ok.unwrap_or_default();
                    if ok.max_frame_bytes > 0 {
                        self.max_frame_bytes = ok.max_frame_bytes as usize;
                    }
                    return Ok(ok);
                }
                FrameType::Close => {
                    let c = f.close.unwrap_or_default();
                    return Err(ClientError::Closed {
                        reason: CloseReason::try_from(c.reason).unwrap_or_default(),
                        message: c.message,
                    });
                }
                _ => {}
            }
        }
    }

    /// Splits into a reader and a writer (for a task each).
    pub fn into_split(self) -> (Reader, Writer) {
        (
            Reader {
                rd: self.rd,
                max_frame_bytes: self.max_frame_bytes,
            },
            Writer {
                wr: self.wr,
                buf: self.buf,
            },
        )
    }
}

/// The reading half of a [`Connection`].
pub struct Reader {
    rd: ReadHalf<Box<dyn Io>>,
    max_frame_bytes: usize,
}

impl Reader {
    /// The next frame; `None` when the gateway closed the connection.
    pub async fn recv(&mut self) -> Result<Option<Frame>, ClientError> {
        frame::read_frame(&mut self.rd, self.max_frame_bytes)
            .await
            .map_err(|e| match e {
                crate::error::FrameError::Io(e) => ClientError::Io(e),
                e => ClientError::Protocol(e.to_string()),
            })
    }
}

/// The writing half of a [`Connection`].
pub struct Writer {
    wr: WriteHalf<Box<dyn Io>>,
    buf: BytesMut,
}

impl Writer {
    /// Sends one frame.
    pub async fn send(&mut self, f: &Frame) -> Result<(), ClientError> {
        self.buf.clear();
        frame::encode_into(f, &mut self.buf);
        self.wr
            .write_all(&self.buf)
            .await
            .map_err(ClientError::Io)?;
        self.wr.flush().await.map_err(ClientError::Io)
    }
}
