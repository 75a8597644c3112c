//! Control-plane errors and their one mapping to gRPC statuses.

use croupier_registry::store::StoreError;
use tonic::Status;

/// What can go wrong in the control plane.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// The caller's identity may not do this.
    #[error("{0}")]
    PermissionDenied(String),
    /// A field is missing or malformed.
    #[error("{0}")]
    InvalidArgument(String),
    /// The agent or session is unknown (or expired).
    #[error("{0}")]
    NotFound(String),
    /// The request is valid but the node's state forbids it.
    #[error("{0}")]
    FailedPrecondition(String),
    /// A limit was hit.
    #[error("{0}")]
    ResourceExhausted(String),
    /// A transient failure; try again.
    #[error("{0}")]
    Unavailable(String),
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
}

impl From<ControlError> for Status {
    fn from(e: ControlError) -> Self {
        let msg = e.to_string();
        match e {
            ControlError::PermissionDenied(_) => Status::permission_denied(msg),
            ControlError::InvalidArgument(_) => Status::invalid_argument(msg),
            ControlError::NotFound(_) => Status::not_found(msg),
            ControlError::FailedPrecondition(_) => Status::failed_precondition(msg),
            ControlError::ResourceExhausted(_) => Status::resource_exhausted(msg),
            ControlError::Unavailable(_) => Status::unavailable(msg),
            ControlError::Internal(_) => Status::internal(msg),
            ControlError::Store { source, .. } => match source {
                StoreError::Unavailable(_) | StoreError::Lagged => Status::unavailable(msg),
                _ => Status::internal(msg),
            },
        }
    }
}
