//! [`GatewayError`], the gateway's one error type, and [`FrameError`], what can be wrong with a
//! frame on the wire.

use std::path::PathBuf;

use croupier_proto::gateway::v1::CloseReason;

/// What can be wrong with one frame. Every variant closes the connection that sent it (and
/// only that one) with the [`CloseReason`] of [`FrameError::close_reason`].
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The length prefix is 0.
    #[error("a frame of length 0")]
    Empty,
    /// The length prefix is above the limit.
    #[error("a frame of {len} bytes is over the limit of {limit} bytes")]
    TooLarge {
        /// The announced length.
        len: usize,
        /// The limit.
        limit: usize,
    },
    /// The bytes are not a `Frame`.
    #[error("the frame does not decode: {0}")]
    Decode(String),
    /// The frame type is unknown or unspecified.
    #[error("unknown frame type {0}")]
    UnknownType(i32),
    /// The flags carry unknown bits.
    #[error("unknown flag bits {0:#x}")]
    UnknownFlags(u32),
    /// A gzip payload does not inflate, or inflates past the limit.
    #[error("the gzip payload is invalid: {0}")]
    Gzip(String),
    /// A REQUEST seq is not above the previous one.
    #[error("request seq {seq} is not above the previous request seq {previous}")]
    OutOfOrder {
        /// The seq received.
        seq: u64,
        /// The previous request seq of the connection.
        previous: u64,
    },
    /// A frame that is not allowed now (e.g. anything before LOGIN).
    #[error("{0}")]
    Unexpected(String),
    /// The connection failed while reading or writing.
    #[error("connection: {0}")]
    Io(#[from] std::io::Error),
}

impl FrameError {
    /// The reason sent in the CLOSE frame for this error.
    pub fn close_reason(&self) -> CloseReason {
        match self {
            FrameError::TooLarge { .. } => CloseReason::FrameTooLarge,
            _ => CloseReason::ProtocolError,
        }
    }

    /// A short label for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            FrameError::Empty => "empty",
            FrameError::TooLarge { .. } => "too_large",
            FrameError::Decode(_) => "decode",
            FrameError::UnknownType(_) => "unknown_type",
            FrameError::UnknownFlags(_) => "unknown_flags",
            FrameError::Gzip(_) => "gzip",
            FrameError::OutOfOrder { .. } => "out_of_order",
            FrameError::Unexpected(_) => "unexpected",
            FrameError::Io(_) => "io",
        }
    }
}

/// Failures of the gateway as a whole (configuration, listeners, the mesh), and of the
/// operations behind `gateway.*` and the HTTP push endpoint.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// The configuration is invalid.
    #[error("gateway configuration: {0}")]
    Config(String),
    /// A file (TLS material, persisted queues) could not be read or written.
    #[error("{what} {path}: {source}")]
    File {
        /// What the file is.
        what: &'static str,
        /// Its path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// TLS material is unusable.
    #[error("client TLS: {0}")]
    Tls(String),
    /// A listener could not be bound.
    #[error("binding {addr}: {source}")]
    Bind {
        /// The address.
        addr: String,
        /// Why.
        source: std::io::Error,
    },
    /// The mesh could not be reached (connecting the client, or the provider failed).
    #[error("mesh: {0}")]
    Mesh(String),
    /// A token was refused.
    #[error("token refused: {0}")]
    Unauthenticated(String),
    /// A request to a `gateway.*` function or the push endpoint is malformed.
    #[error("{0}")]
    InvalidRequest(String),
    /// The gateway is draining and takes no new work.
    #[error("the gateway is shutting down")]
    Draining,
}

impl GatewayError {
    /// The handler error code of this error, as `gateway.*` callers see it.
    pub fn code(&self) -> &'static str {
        match self {
            GatewayError::InvalidRequest(_) | GatewayError::Config(_) => "INVALID_ARGUMENT",
            GatewayError::Unauthenticated(_) => "UNAUTHENTICATED",
            GatewayError::Draining | GatewayError::Mesh(_) => "UNAVAILABLE",
            GatewayError::File { .. } | GatewayError::Tls(_) | GatewayError::Bind { .. } => {
                "INTERNAL"
            }
        }
    }
}

impl From<GatewayError> for croupier_sdk::HandlerError {
    fn from(e: GatewayError) -> Self {
        croupier_sdk::HandlerError::new(e.code(), e.to_string())
    }
}
