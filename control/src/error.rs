//! Control-plane errors and their one mapping to gRPC statuses: each variant says what went
//! wrong for an agent or an admin; [`ControlError::code`] picks its code.

use croupier_registry::store::StoreError;
use tonic::{Code, Status};

/// What can go wrong in the control plane.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// The caller's identity may not do this.
    #[error("{0}")]
    NotAllowed(String),
    /// A request field is missing or malformed (ids, labels, descriptors, states). Final.
    #[error("{0}")]
    BadRequest(String),
    /// The agent has no live session here (expired or never registered): register again.
    #[error("{0}")]
    NoSession(String),
    /// The agent is not registered anywhere.
    #[error("{0}")]
    NotRegistered(String),
    /// Nothing of what was asked for exists (a node's inventory, a version of it).
    #[error("{0}")]
    NotFound(String),
    /// The node is disabled: it may not register until an admin sets it back.
    #[error("{0}")]
    NodeDisabled(String),
    /// Another live agent owns a descriptor the registration would change.
    #[error("{0}")]
    DescriptorOwned(String),
    /// A limit was reached (labels, functions, status size).
    #[error("{0}")]
    LimitReached(String),
    /// The server is shutting down; register with another one.
    #[error("{0}")]
    Draining(String),
    /// The tunnel closed while it was being set up; connect again.
    #[error("{0}")]
    TunnelClosed(String),
    /// The record changed since the caller read it (a policy's expected revision). Final: read
    /// again.
    #[error("{0}")]
    Conflict(String),
    /// The audit log cannot take records; audited actions are refused (fail closed).
    #[error("{0}")]
    AuditUnavailable(String),
    /// A bug: the server's own record could not be encoded.
    #[error("{0}")]
    Internal(String),
    /// The store failed.
    #[error("{context}: {source}")]
    Store {
        /// What was being done.
        context: String,
        /// The store error.
        source: StoreError,
    },
}

impl ControlError {
    /// Wraps a store error with what was being done.
    pub fn store(context: impl Into<String>) -> impl FnOnce(StoreError) -> ControlError {
        let context = context.into();
        move |source| ControlError::Store { context, source }
    }

    /// The gRPC code of the error, by retryability.
    pub fn code(&self) -> Code {
        match self {
            ControlError::NotAllowed(_) => Code::PermissionDenied,
            ControlError::BadRequest(_) => Code::InvalidArgument,
            ControlError::NoSession(_)
            | ControlError::NotRegistered(_)
            | ControlError::NotFound(_) => Code::NotFound,
            ControlError::NodeDisabled(_) | ControlError::DescriptorOwned(_) => {
                Code::FailedPrecondition
            }
            ControlError::LimitReached(_) => Code::ResourceExhausted,
            ControlError::Conflict(_) => Code::FailedPrecondition,
            ControlError::Draining(_)
            | ControlError::TunnelClosed(_)
            | ControlError::AuditUnavailable(_) => Code::Unavailable,
            ControlError::Internal(_) => Code::Internal,
            ControlError::Store { source, .. } => match source {
                StoreError::Unavailable(_) | StoreError::Lagged => Code::Unavailable,
                _ => Code::Internal,
            },
        }
    }
}

impl ControlError {
    /// The machine code sent in the status's `ErrorInfo` (`NO_SESSION`, `NODE_DISABLED`…).
    pub fn reason(&self) -> &'static str {
        match self {
            ControlError::NotAllowed(_) => "PERMISSION_DENIED",
            ControlError::BadRequest(_) => "BAD_REQUEST",
            ControlError::NoSession(_) => "NO_SESSION",
            ControlError::NotRegistered(_) => "AGENT_NOT_REGISTERED",
            ControlError::NotFound(_) => "NOT_FOUND",
            ControlError::NodeDisabled(_) => "NODE_DISABLED",
            ControlError::DescriptorOwned(_) => "DESCRIPTOR_OWNED",
            ControlError::LimitReached(_) => "LIMIT_REACHED",
            ControlError::Draining(_) => "DRAINING",
            ControlError::TunnelClosed(_) => "TUNNEL_CLOSED",
            ControlError::Conflict(_) => "CONFLICT",
            ControlError::AuditUnavailable(_) => "AUDIT_UNAVAILABLE",
            ControlError::Internal(_) => "INTERNAL",
            ControlError::Store { .. } => "STORE_FAILED",
        }
    }
}

impl From<ControlError> for Status {
    fn from(e: ControlError) -> Self {
        croupier_proto::status::with_error_info(e.code(), e.to_string(), e.reason(), [])
    }
}
