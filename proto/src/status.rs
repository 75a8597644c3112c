//! Error statuses with machine-readable details, in gRPC's richer error model: every error a
//! Croupier service returns carries, in `grpc-status-details-bin`, a `google.rpc.Status` whose
//! details hold a `google.rpc.ErrorInfo` (`reason` = the machine code such as `NO_AGENT`,
//! `domain` = [`DOMAIN`], `metadata` = the details) for standard clients, and the same as the
//! API's own `croupier.common.v1.ErrorInfo {code, message, details}`.

use std::collections::HashMap;

use prost::Message;
use tonic::{Code, Status};

use crate::common::v1::ErrorInfo;

/// The `domain` of the `google.rpc.ErrorInfo` Croupier sends.
pub const DOMAIN: &str = "croupier";

const GOOGLE_ERROR_INFO: &str = "type.googleapis.com/google.rpc.ErrorInfo";
const CROUPIER_ERROR_INFO: &str = "type.googleapis.com/croupier.common.v1.ErrorInfo";

/// A status with `code` and `message` whose details say `reason` (an upper-case machine code)
/// and `details` (field, function, agent…).
pub fn with_error_info(
    code: Code,
    message: impl Into<String>,
    reason: &str,
    details: impl IntoIterator<Item = (&'static str, String)>,
) -> Status {
    let message = message.into();
    let details: HashMap<String, String> = details
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
    let google = tonic_types::pb::ErrorInfo {
        reason: reason.to_string(),
        domain: DOMAIN.to_string(),
        metadata: details.clone(),
    };
    let ours = ErrorInfo {
        code: reason.to_string(),
        message: message.clone(),
        details,
    };
    let status = tonic_types::pb::Status {
        code: code as i32,
        message: message.clone(),
        details: vec![
            prost_types::Any {
                type_url: GOOGLE_ERROR_INFO.into(),
                value: google.encode_to_vec(),
            },
            prost_types::Any {
                type_url: CROUPIER_ERROR_INFO.into(),
                value: ours.encode_to_vec(),
            },
        ],
    };
    Status::with_details(code, message, status.encode_to_vec().into())
}

/// The Croupier `ErrorInfo` a status carries, if any.
pub fn error_info(status: &Status) -> Option<ErrorInfo> {
    let details = tonic_types::pb::Status::decode(status.details()).ok()?;
    details
        .details
        .iter()
        .find(|d| d.type_url == CROUPIER_ERROR_INFO)
        .and_then(|d| ErrorInfo::decode(d.value.as_slice()).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_details_carry_both_error_infos() {
        let s = with_error_info(
            Code::Unavailable,
            "no agent",
            "NO_AGENT",
            [("function", "f".to_string())],
        );
        assert_eq!(s.code(), Code::Unavailable);
        let info = error_info(&s).unwrap();
        assert_eq!(info.code, "NO_AGENT");
        assert_eq!(info.message, "no agent");
        assert_eq!(info.details["function"], "f");
        let raw = tonic_types::pb::Status::decode(s.details()).unwrap();
        let google = tonic_types::pb::ErrorInfo::decode(raw.details[0].value.as_slice()).unwrap();
        assert_eq!(
            (google.reason.as_str(), google.domain.as_str()),
            ("NO_AGENT", DOMAIN)
        );
        assert_eq!(error_info(&Status::internal("plain")), None);
    }
}
