//! Invocation errors and their one mapping to gRPC statuses, picked by retryability.

use croupier_registry::store::StoreError;
use tonic::Status;

/// What can go wrong when invoking a function.
#[derive(Debug, thiserror::Error)]
pub enum FunctionError {
    /// A field is missing or malformed, or the payload fails the schema. Final.
    #[error("{0}")]
    InvalidArgument(String),
    /// The function was never registered. Final.
    #[error("{0}")]
    NotFound(String),
    /// No agent can take the call now (none online, all in maintenance, agent lost). Retryable.
    #[error("{0}")]
    Unavailable(String),
    /// The deadline passed before the agent answered.
    #[error("{0}")]
    DeadlineExceeded(String),
    /// The caller may not invoke this function.
    #[error("{0}")]
    PermissionDenied(String),
    /// The request conflicts with recorded state (same idempotency key, other payload). Final.
    #[error("{0}")]
    FailedPrecondition(String),
    /// A limit was hit.
    #[error("{0}")]
    ResourceExhausted(String),
    /// The first call with the same idempotency key is still running; retry later for its
    /// outcome (nothing runs twice).
    #[error("{0}")]
    StillRunning(String),
    /// The store failed.
    #[error("{context}: {source}")]
    Store {
        /// What was being done.
        context: String,
        /// The store error.
        source: StoreError,
    },
    /// A bug or corrupt record.
    #[error("{0}")]
    Internal(String),
}

impl FunctionError {
    /// Wraps a store error with what was being done.
    pub fn store(context: impl Into<String>) -> impl FnOnce(StoreError) -> FunctionError {
        let context = context.into();
        move |source| FunctionError::Store { context, source }
    }

    /// The gRPC status code name, for per-agent results of a broadcast.
    pub fn code_name(&self) -> &'static str {
        match self {
            FunctionError::InvalidArgument(_) => "INVALID_ARGUMENT",
            FunctionError::NotFound(_) => "NOT_FOUND",
            FunctionError::Unavailable(_) => "UNAVAILABLE",
            FunctionError::DeadlineExceeded(_) => "DEADLINE_EXCEEDED",
            FunctionError::PermissionDenied(_) => "PERMISSION_DENIED",
            FunctionError::FailedPrecondition(_) => "FAILED_PRECONDITION",
            FunctionError::ResourceExhausted(_) => "RESOURCE_EXHAUSTED",
            FunctionError::StillRunning(_) => "ABORTED",
            FunctionError::Store { source, .. } => match source {
                StoreError::Unavailable(_) | StoreError::Lagged => "UNAVAILABLE",
                _ => "INTERNAL",
            },
            FunctionError::Internal(_) => "INTERNAL",
        }
    }
}

impl From<FunctionError> for Status {
    fn from(e: FunctionError) -> Self {
        let msg = e.to_string();
        match e.code_name() {
            "INVALID_ARGUMENT" => Status::invalid_argument(msg),
            "NOT_FOUND" => Status::not_found(msg),
            "UNAVAILABLE" => Status::unavailable(msg),
            "DEADLINE_EXCEEDED" => Status::deadline_exceeded(msg),
            "PERMISSION_DENIED" => Status::permission_denied(msg),
            "FAILED_PRECONDITION" => Status::failed_precondition(msg),
            "RESOURCE_EXHAUSTED" => Status::resource_exhausted(msg),
            "ABORTED" => Status::aborted(msg),
            _ => Status::internal(msg),
        }
    }
}
