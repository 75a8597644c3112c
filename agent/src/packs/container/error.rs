//! Docker errors as handler errors: `UNAVAILABLE` when Docker is not running or does not
//! answer, `NOT_FOUND` for a missing image or container (saying that images are never pulled
//! and that a container lives on one agent), `ALREADY_EXISTS` for a name in use,
//! `FAILED_PRECONDITION` for other conflicts, `INVALID_ARGUMENT` when Docker rejects the
//! configuration and `PERMISSION_DENIED` when the socket or an authorization plugin refuses.

use bollard::errors::Error as DockerError;
use croupier_sdk::HandlerError;
use croupier_sdk::tls::error_chain;

use super::docker::{REQUEST_TIMEOUT, socket_addr};

/// What a failed Docker request was about, for the message of a 404.
#[derive(Clone, Copy, Debug)]
pub(super) enum Subject<'a> {
    /// A container, by id or name.
    Container(&'a str),
    /// An image, when creating a container.
    Image(&'a str),
    /// The daemon itself.
    Daemon,
}

/// The handler error for a failed Docker request made while `action` ("creating the
/// container", "stopping container x"…).
pub(super) fn docker_error(action: &str, subject: Subject<'_>, e: DockerError) -> HandlerError {
    let err = docker_error_inner(action, subject, e);
    if err.code == "UNAVAILABLE" {
        metrics::counter!(crate::metrics::DOCKER_UNAVAILABLE).increment(1);
    }
    err
}

fn docker_error_inner(action: &str, subject: Subject<'_>, e: DockerError) -> HandlerError {
    match e {
        DockerError::DockerResponseServerError {
            status_code,
            message,
        } => server_error(action, subject, status_code, message.trim()),
        DockerError::SocketNotFoundError(path) => HandlerError::new(
            "UNAVAILABLE",
            format!("Docker is not running (no Docker socket at {path})"),
        ),
        DockerError::RequestTimeoutError => HandlerError::new(
            "UNAVAILABLE",
            format!(
                "Docker did not answer within {} s while {action}",
                REQUEST_TIMEOUT.as_secs()
            ),
        ),
        other => {
            let detail = error_chain(&other);
            match io_kind(&other) {
                Some(
                    std::io::ErrorKind::NotFound
                    | std::io::ErrorKind::ConnectionRefused
                    | std::io::ErrorKind::AddrNotAvailable,
                ) => HandlerError::new(
                    "UNAVAILABLE",
                    format!(
                        "Docker is not running (cannot connect to {}: {detail})",
                        socket_addr()
                    ),
                ),
                Some(std::io::ErrorKind::PermissionDenied) => HandlerError::new(
                    "PERMISSION_DENIED",
                    format!(
                        "permission denied on the Docker socket {} ({detail}); the agent's user \
                         needs access to it (root, or membership of the docker group)",
                        socket_addr()
                    ),
                ),
                Some(_) => HandlerError::new(
                    "UNAVAILABLE",
                    format!("lost the connection to Docker while {action} ({detail})"),
                ),
                None if matches!(
                    other,
                    DockerError::HyperLegacyError { .. } | DockerError::HyperResponseError { .. }
                ) =>
                {
                    HandlerError::new(
                        "UNAVAILABLE",
                        format!("lost the connection to Docker while {action} ({detail})"),
                    )
                }
                None => HandlerError::internal(format!("{action}: {detail}")),
            }
        }
    }
}

/// The kind of the first I/O error in `e`'s chain.
fn io_kind(e: &DockerError) -> Option<std::io::ErrorKind> {
    if let DockerError::IOError { err } = e {
        return Some(err.kind());
    }
    let mut cur: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            return Some(io.kind());
        }
        cur = err.source();
    }
    None
}

/// The handler error for an error status from Docker.
fn server_error(action: &str, subject: Subject<'_>, status: u16, message: &str) -> HandlerError {
    match status {
        404 => match subject {
            Subject::Image(image) if message.to_ascii_lowercase().contains("image") => {
                HandlerError::new("NOT_FOUND", image_missing(image))
            }
            Subject::Container(id) => HandlerError::new(
                "NOT_FOUND",
                format!(
                    "no such container {id} on this agent (a container lives on the agent that \
                     created it: call that agent with targeted routing)"
                ),
            ),
            _ => HandlerError::new("NOT_FOUND", format!("{action}: {message}")),
        },
        409 if message.contains("already in use") => {
            HandlerError::new("ALREADY_EXISTS", format!("{action}: {message}"))
        }
        409 => HandlerError::new("FAILED_PRECONDITION", format!("{action}: {message}")),
        400 => HandlerError::new(
            "INVALID_ARGUMENT",
            format!("{action}: Docker rejected the request: {message}"),
        ),
        401 | 403 => HandlerError::new(
            "PERMISSION_DENIED",
            format!("{action}: Docker refused: {message}"),
        ),
        503 => HandlerError::new(
            "UNAVAILABLE",
            format!("{action}: Docker is unavailable: {message}"),
        ),
        _ => HandlerError::internal(format!("{action}: Docker answered {status}: {message}")),
    }
}

pub(super) fn image_missing(image: &str) -> String {
    format!(
        "image {image} not found locally; it cannot be pulled here (the container pack never \
         pulls images): load, import or build it on this host first"
    )
}

pub(super) fn invalid(message: impl Into<String>) -> HandlerError {
    HandlerError::new("INVALID_ARGUMENT", message)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packs::container::fake::{refused, server};

    #[test]
    fn docker_errors_map_to_clear_codes() {
        let e = docker_error(
            "creating the container",
            Subject::Image("nope:1"),
            server(404, "No such image: nope:1"),
        );
        assert_eq!(e.code, "NOT_FOUND");
        assert!(
            e.message
                .starts_with("image nope:1 not found locally; it cannot be pulled here"),
            "{}",
            e.message
        );
        let e = docker_error(
            "inspecting container x",
            Subject::Container("x"),
            server(404, "No such container: x"),
        );
        assert_eq!(e.code, "NOT_FOUND");
        assert!(
            e.message.starts_with("no such container x on this agent"),
            "{}",
            e.message
        );
        let e = docker_error(
            "creating the container",
            Subject::Image("img"),
            server(
                409,
                "Conflict. The container name \"/web\" is already in use by container \"abc\".",
            ),
        );
        assert_eq!(e.code, "ALREADY_EXISTS");
        assert!(
            e.message.contains("\"/web\" is already in use"),
            "{}",
            e.message
        );
        let e = docker_error(
            "removing container x",
            Subject::Container("x"),
            server(409, "You cannot remove a running container x."),
        );
        assert_eq!(e.code, "FAILED_PRECONDITION");
        assert_eq!(
            e.message,
            "removing container x: You cannot remove a running container x."
        );
        let e = docker_error(
            "creating the container",
            Subject::Image("i"),
            server(400, "invalid mount"),
        );
        assert_eq!(e.code, "INVALID_ARGUMENT");
        let e = docker_error(
            "listing containers",
            Subject::Daemon,
            server(403, "authz denied"),
        );
        assert_eq!(e.code, "PERMISSION_DENIED");
        let e = docker_error("listing containers", Subject::Daemon, server(500, "boom"));
        assert_eq!(
            (e.code.as_str(), e.message.as_str()),
            ("INTERNAL", "listing containers: Docker answered 500: boom")
        );

        // Docker not running: no socket, or nobody listening on it.
        let e = docker_error(
            "listing containers",
            Subject::Daemon,
            DockerError::SocketNotFoundError("/var/run/docker.sock".into()),
        );
        assert_eq!(e.code, "UNAVAILABLE");
        assert_eq!(
            e.message,
            "Docker is not running (no Docker socket at /var/run/docker.sock)"
        );
        let e = docker_error("listing containers", Subject::Daemon, refused());
        assert_eq!(e.code, "UNAVAILABLE");
        assert!(
            e.message
                .starts_with("Docker is not running (cannot connect to "),
            "{}",
            e.message
        );
        let e = docker_error(
            "listing containers",
            Subject::Daemon,
            DockerError::IOError {
                err: std::io::Error::from(std::io::ErrorKind::PermissionDenied),
            },
        );
        assert_eq!(e.code, "PERMISSION_DENIED");
        assert!(e.message.contains("docker group"), "{}", e.message);
        let e = docker_error(
            "stopping container x",
            Subject::Container("x"),
            DockerError::RequestTimeoutError,
        );
        assert_eq!(e.code, "UNAVAILABLE");
        assert!(
            e.message.contains("while stopping container x"),
            "{}",
            e.message
        );
    }
}
