//! Invocation errors and their one mapping to gRPC statuses. Each variant says what went wrong
//! in the domain; its gRPC code is chosen once, in [`FunctionError::code`], by retryability:
//! `UNAVAILABLE` for what may work on retry, `INVALID_ARGUMENT`/`FAILED_PRECONDITION` only for
//! what is final.

use croupier_proto::limits::PayloadError;
use croupier_registry::schema::SchemaError;
use croupier_registry::store::StoreError;
use tonic::{Code, Status};

/// What can go wrong when invoking a function, running a job or managing pipelines.
#[derive(Debug, thiserror::Error)]
pub enum FunctionError {
    /// A request field is missing or malformed (ids, options, routing, templates). Final.
    #[error("{0}")]
    BadRequest(String),
    /// The payload passes the limits every decoder shares.
    #[error("the payload of {function} {error}")]
    Payload {
        /// The function called.
        function: String,
        /// Which limit.
        error: PayloadError,
    },
    /// The payload fails the function's params schema (the detail names the fields). Final.
    #[error("payload does not match the params schema of {function}: {detail}")]
    SchemaMismatch {
        /// The function called.
        function: String,
        /// What failed, by JSON pointer.
        detail: String,
    },
    /// The function's stored schema is refused (limits, or not a JSON Schema).
    #[error("the params_schema of {function} {error}; fix its descriptor")]
    BadSchema {
        /// The function.
        function: String,
        /// Why.
        error: SchemaError,
    },
    /// Validating the payload overran the schema budget; the schema is marked costly.
    #[error(
        "checking the payload against the params schema of {function} took longer than \
         {budget:?}; the schema is too costly, and calls of {function} are refused until its \
         descriptor changes"
    )]
    SchemaTooCostly {
        /// The function.
        function: String,
        /// The budget it overran.
        budget: std::time::Duration,
    },
    /// The function was never registered in the game and env. Final.
    #[error(
        "function {function} is not registered in game {game:?} env {env:?}{}; `croupier \
         functions` lists what is",
        did_you_mean(nearest)
    )]
    NotRegistered {
        /// The function.
        function: String,
        /// Game.
        game: String,
        /// Environment.
        env: String,
        /// Registered names close to it, nearest first.
        nearest: Vec<String>,
    },
    /// The targeted agent does not provide the function.
    #[error("{0}")]
    NotProvided(String),
    /// No such job (or its record passed retention).
    #[error(
        "job {0:?} does not exist (or its record passed retention); `croupier job list` shows \
         the jobs there are"
    )]
    JobNotFound(String),
    /// No stored log of a pipeline step (not ended yet, cancelled, or no such step).
    #[error("{0}")]
    StepLogNotFound(String),
    /// No such pipeline template.
    #[error("pipeline {0:?} does not exist; `croupier pipeline list` shows those there are")]
    PipelineNotFound(String),
    /// No agent can take the call now (none online, in maintenance, disconnected). Retryable.
    #[error("{0}")]
    NoAgent(String),
    /// The agent was lost before it answered; the call may or may not have run.
    #[error("{0}")]
    AgentLost(String),
    /// Another replica (the owner of an agent or a job) cannot be reached now. Retryable.
    #[error("{0}")]
    ReplicaUnreachable(String),
    /// The deadline passed before the agent answered.
    #[error("{0}")]
    DeadlinePassed(String),
    /// The caller's identity may not do this.
    #[error("{0}")]
    NotAllowed(String),
    /// The idempotency key was used with another payload. Final.
    #[error(
        "idempotency key was already used with a different payload; use a new key for a \
         different request"
    )]
    IdempotencyConflict,
    /// The first call with the idempotency key still runs; retry later for its outcome.
    #[error("{0}")]
    StillRunning(String),
    /// Another live agent owns the function's descriptor. Final until it leaves.
    #[error("{0}")]
    DescriptorOwned(String),
    /// A limit was reached (calls in flight, frame size).
    #[error("{0}")]
    LimitReached(String),
    /// The store failed.
    #[error("{context}: {source}")]
    Store {
        /// What was being done.
        context: String,
        /// The store error.
        source: StoreError,
    },
    /// The call needs approval first: a pending approval was created instead of running it.
    #[error(
        "{function} needs approval by {count} of {approvers} before it runs: approval {id} is \
         pending (expires in {ttl}); an approver runs `croupier approval approve {id} --reason \
         ...`, and `croupier approval show {id}` shows the outcome"
    )]
    ApprovalRequired {
        /// The approval id.
        id: String,
        /// The function.
        function: String,
        /// The approvers' role.
        approvers: String,
        /// Approvals needed.
        count: u32,
        /// How long it waits.
        ttl: String,
    },
    /// No such approval.
    #[error("approval {0:?} does not exist; `croupier approval list` shows those there are")]
    ApprovalNotFound(String),
    /// The approval is no longer pending, or the approver already decided. Final.
    #[error("{0}")]
    ApprovalClosed(String),
    /// The audit log cannot take records; audited actions are refused (fail closed).
    #[error("{0}")]
    AuditUnavailable(String),
    /// A stored record could not be read back (a bug or a damaged store).
    #[error("{0}")]
    Corrupt(String),
    /// Another replica answered a forwarded request with this status; its code is kept.
    #[error("{}", .0.message())]
    Remote(Status),
}

impl FunctionError {
    /// Wraps a store error with what was being done.
    pub fn store(context: impl Into<String>) -> impl FnOnce(StoreError) -> FunctionError {
        let context = context.into();
        move |source| FunctionError::Store { context, source }
    }

    /// The gRPC code of the error.
    pub fn code(&self) -> Code {
        match self {
            FunctionError::BadRequest(_) | FunctionError::SchemaMismatch { .. } => {
                Code::InvalidArgument
            }
            FunctionError::Payload { error, .. } => match error {
                PayloadError::TooDeep { .. } => Code::InvalidArgument,
                PayloadError::TooLarge { .. } => Code::ResourceExhausted,
            },
            FunctionError::BadSchema { .. }
            | FunctionError::ApprovalRequired { .. }
            | FunctionError::ApprovalClosed(_)
            | FunctionError::IdempotencyConflict
            | FunctionError::DescriptorOwned(_) => Code::FailedPrecondition,
            FunctionError::SchemaTooCostly { .. } | FunctionError::LimitReached(_) => {
                Code::ResourceExhausted
            }
            FunctionError::NotRegistered { .. }
            | FunctionError::NotProvided(_)
            | FunctionError::JobNotFound(_)
            | FunctionError::StepLogNotFound(_)
            | FunctionError::ApprovalNotFound(_)
            | FunctionError::PipelineNotFound(_) => Code::NotFound,
            FunctionError::NoAgent(_)
            | FunctionError::AuditUnavailable(_)
            | FunctionError::AgentLost(_)
            | FunctionError::ReplicaUnreachable(_) => Code::Unavailable,
            FunctionError::DeadlinePassed(_) => Code::DeadlineExceeded,
            FunctionError::NotAllowed(_) => Code::PermissionDenied,
            FunctionError::StillRunning(_) => Code::Aborted,
            FunctionError::Store { source, .. } => match source {
                StoreError::Unavailable(_) | StoreError::Lagged => Code::Unavailable,
                _ => Code::Internal,
            },
            FunctionError::Corrupt(_) => Code::Internal,
            FunctionError::Remote(s) => s.code(),
        }
    }

    /// The gRPC code's name ("UNAVAILABLE"…), for per-agent results of a broadcast and the audit.
    pub fn code_name(&self) -> &'static str {
        code_name(self.code())
    }
}

/// `" (did you mean a or b?)"`, or nothing when no name is close.
fn did_you_mean(nearest: &[String]) -> String {
    match nearest {
        [] => String::new(),
        [one] => format!(" (did you mean {one}?)"),
        [init @ .., last] => format!(" (did you mean {} or {last}?)", init.join(", ")),
    }
}

/// The upper-case name of a gRPC code, as the API's `error_code` fields carry it.
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

impl FunctionError {
    /// The machine code sent in the status's `ErrorInfo` (`NO_AGENT`, `SCHEMA_VIOLATION`…).
    pub fn reason(&self) -> &'static str {
        match self {
            FunctionError::BadRequest(_) => "BAD_REQUEST",
            FunctionError::Payload { error, .. } => match error {
                PayloadError::TooDeep { .. } => "PAYLOAD_TOO_DEEP",
                PayloadError::TooLarge { .. } => "PAYLOAD_TOO_LARGE",
            },
            FunctionError::SchemaMismatch { .. } => "SCHEMA_VIOLATION",
            FunctionError::BadSchema { .. } => "BAD_SCHEMA",
            FunctionError::SchemaTooCostly { .. } => "SCHEMA_TOO_COSTLY",
            FunctionError::NotRegistered { .. } => "FUNCTION_NOT_FOUND",
            FunctionError::NotProvided(_) => "NOT_PROVIDED",
            FunctionError::JobNotFound(_) => "JOB_NOT_FOUND",
            FunctionError::StepLogNotFound(_) => "STEP_LOG_NOT_FOUND",
            FunctionError::PipelineNotFound(_) => "PIPELINE_NOT_FOUND",
            FunctionError::NoAgent(_) => "NO_AGENT",
            FunctionError::AgentLost(_) => "AGENT_LOST",
            FunctionError::ReplicaUnreachable(_) => "REPLICA_UNREACHABLE",
            FunctionError::DeadlinePassed(_) => "DEADLINE_EXCEEDED",
            FunctionError::NotAllowed(_) => "PERMISSION_DENIED",
            FunctionError::IdempotencyConflict => "IDEMPOTENCY_CONFLICT",
            FunctionError::StillRunning(_) => "STILL_RUNNING",
            FunctionError::DescriptorOwned(_) => "DESCRIPTOR_OWNED",
            FunctionError::LimitReached(_) => "LIMIT_REACHED",
            FunctionError::Store { .. } => "STORE_FAILED",
            FunctionError::Corrupt(_) => "CORRUPT_RECORD",
            FunctionError::ApprovalRequired { .. } => "APPROVAL_REQUIRED",
            FunctionError::ApprovalNotFound(_) => "APPROVAL_NOT_FOUND",
            FunctionError::ApprovalClosed(_) => "APPROVAL_CLOSED",
            FunctionError::AuditUnavailable(_) => "AUDIT_UNAVAILABLE",
            FunctionError::Remote(_) => "REMOTE",
        }
    }

    /// The details sent with the reason: the function, job, pipeline or field concerned.
    fn details(&self) -> Vec<(&'static str, String)> {
        match self {
            FunctionError::Payload { function, .. }
            | FunctionError::BadSchema { function, .. }
            | FunctionError::SchemaTooCostly { function, .. } => {
                vec![("function", function.clone())]
            }
            FunctionError::SchemaMismatch { function, detail } => {
                vec![
                    ("function", function.clone()),
                    ("violations", detail.clone()),
                ]
            }
            FunctionError::NotRegistered {
                function,
                game,
                env,
                nearest,
            } => {
                let mut d = vec![
                    ("function", function.clone()),
                    ("game", game.clone()),
                    ("env", env.clone()),
                ];
                if !nearest.is_empty() {
                    d.push(("did_you_mean", nearest.join(",")));
                }
                d
            }
            FunctionError::JobNotFound(id) => vec![("job_id", id.clone())],
            FunctionError::ApprovalRequired {
                id,
                function,
                approvers,
                count,
                ..
            } => vec![
                ("approval_id", id.clone()),
                ("function", function.clone()),
                ("approvers", approvers.clone()),
                ("count", count.to_string()),
            ],
            FunctionError::ApprovalNotFound(id) => vec![("approval_id", id.clone())],
            FunctionError::PipelineNotFound(id) => vec![("template_id", id.clone())],
            _ => Vec::new(),
        }
    }
}

impl From<FunctionError> for Status {
    fn from(e: FunctionError) -> Self {
        match e {
            // A forwarded error keeps the owning replica's status, details included.
            FunctionError::Remote(status) => status,
            e => croupier_proto::status::with_error_info(
                e.code(),
                e.to_string(),
                e.reason(),
                e.details(),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_follow_retryability() {
        assert_eq!(FunctionError::NoAgent("x".into()).code(), Code::Unavailable);
        assert_eq!(
            FunctionError::IdempotencyConflict.code(),
            Code::FailedPrecondition
        );
        let deep = FunctionError::Payload {
            function: "f".into(),
            error: PayloadError::TooDeep { depth: 33 },
        };
        let status = Status::from(deep);
        assert_eq!(status.code(), Code::InvalidArgument);
        let info = croupier_proto::status::error_info(&status).unwrap();
        assert_eq!(info.code, "PAYLOAD_TOO_DEEP");
        assert_eq!(info.details["function"], "f");
        let remote = FunctionError::Remote(Status::permission_denied("no"));
        assert_eq!(remote.code_name(), "PERMISSION_DENIED");
        assert_eq!(Status::from(remote).message(), "no");
    }
}
