//! The CLI's exit codes, one per class of outcome, so that a script can tell them apart:
//!
//! | code | meaning |
//! |---|---|
//! | 0 | success |
//! | 1 | the function ran and failed (`success=false`), a job ended `ERROR`, or a job's command exited non-zero |
//! | 2 | usage: bad arguments or flags, a payload that is not a JSON object |
//! | 3 | the job was cancelled |
//! | 4 | the server refused the request (not found, invalid, permission denied, deadline exceeded…) |
//! | 5 | no server could be reached: connection refused, TLS handshake failed, server unavailable |
//! | 6 | a local problem: certificate or input files missing or unreadable, other errors |

use tonic::Status;

/// Success.
pub const OK: i32 = 0;
/// The function or job ran and failed.
pub const FAILED: i32 = 1;
/// Bad arguments.
pub const USAGE: i32 = 2;
/// The job was cancelled.
pub const CANCELLED: i32 = 3;
/// The server answered with an error status.
pub const REFUSED: i32 = 4;
/// No server could be reached.
pub const UNREACHABLE: i32 = 5;
/// A local problem.
pub const LOCAL: i32 = 6;

/// A command's failure with the exit code of its class.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct Failure {
    /// The exit code.
    pub code: i32,
    /// What to tell the user.
    pub message: String,
}

/// A usage error (exit 2).
pub fn usage(message: impl Into<String>) -> anyhow::Error {
    Failure {
        code: USAGE,
        message: message.into(),
    }
    .into()
}

/// The exit code of an error status: unreachable when the SDK client marked it as a transport
/// failure (never sent, connection broken, circuit open), refused when the server answered.
pub fn of_status(s: &Status) -> i32 {
    if croupier_sdk::retry::is_transport_failure(s) {
        UNREACHABLE
    } else {
        REFUSED
    }
}

/// The exit code of an error that ended a command.
pub fn of_error(e: &anyhow::Error) -> i32 {
    if let Some(f) = e.downcast_ref::<Failure>() {
        return f.code;
    }
    if let Some(s) = e.downcast_ref::<Status>() {
        return of_status(s);
    }
    match e.downcast_ref::<croupier_sdk::tls::TlsError>() {
        Some(croupier_sdk::tls::TlsError::Connect(..)) => UNREACHABLE,
        Some(croupier_sdk::tls::TlsError::Address(..)) => USAGE,
        Some(croupier_sdk::tls::TlsError::Read(..)) | None => LOCAL,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    #[test]
    fn each_class_has_its_code() {
        let refused = croupier_proto::status::with_error_info(
            Code::Unavailable,
            "no agent for f",
            "NO_AGENT",
            [],
        );
        assert_eq!(of_status(&refused), REFUSED);
        // A server's UNAVAILABLE is an answer; only the client's own transport mark (tested
        // in the SDK, and end to end in tests/cli.rs and tests/security.rs) is unreachable.
        assert_eq!(of_status(&Status::unavailable("draining")), REFUSED);
        assert_eq!(of_status(&Status::not_found("x")), REFUSED);
        assert_eq!(of_error(&usage("bad flag")), USAGE);
        assert_eq!(of_error(&anyhow::anyhow!("reading a file")), LOCAL);
        let tls = croupier_sdk::tls::TlsError::Connect("https://x".into(), "refused".into());
        assert_eq!(
            of_error(&anyhow::Error::from(tls).context("connecting")),
            UNREACHABLE
        );
    }
}
