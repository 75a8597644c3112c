//! Croupier's protocol: the generated message types and gRPC stubs for `ControlService`,
//! `FunctionService` and `RegistryService`, plus small conversions between
//! `google.protobuf.Struct` and `serde_json::Value`.
//!
//! Layout:
//! - [`common`], [`control`], [`function`], [`registry`], [`gateway`]: generated code, one module
//!   per package ([`gateway`] is the game gateway's client framing, not a gRPC service).
//! - [`json`] — `Struct` ⇄ JSON conversions.
//! - [`limits`] — the depth and size limits every decoder shares, checked at the edge.
//! - [`codec`] — the gRPC codec: prost's, with substitutes for undecodable tunnel frames.
//! - [`task`] — named background tasks (the one place that spawns), with a tracker for shutdown.
//! - [`status`] — error statuses with `ErrorInfo` details (the richer error model).
//! - [`trace`] — W3C trace context through the mesh (`traceparent`) and its spans.
//! - [`metric_handles`] — metric handles looked up once per label set; the recording switch.
//! - [`FILE_DESCRIPTOR_SET`]: the encoded descriptors, for server reflection.

// Library code handles its errors; tests may unwrap.
#![cfg_attr(not(test), warn(clippy::unwrap_used))]
#![allow(missing_docs)] // generated code carries the proto comments; helpers below are documented

pub mod codec;
pub mod json;
pub mod limits;
pub mod metric_handles;
pub mod status;
pub mod task;
pub mod trace;

/// `croupier.common.v1`: descriptors and node states.
pub mod common {
    /// Version 1.
    pub mod v1 {
        tonic::include_proto!("croupier.common.v1");
    }
}

/// `croupier.function.v1`: invocation and jobs.
pub mod function {
    /// Version 1.
    pub mod v1 {
        tonic::include_proto!("croupier.function.v1");
    }
}

/// `croupier.control.v1`: agent registration, liveness and the tunnel.
pub mod control {
    /// Version 1.
    pub mod v1 {
        tonic::include_proto!("croupier.control.v1");

        impl NodeInventory {
            /// Whether `other` describes the node the same way (whenever each was collected).
            pub fn same_as(&self, other: &NodeInventory) -> bool {
                let strip = |i: &NodeInventory| NodeInventory {
                    collected_at: 0,
                    ..i.clone()
                };
                strip(self) == strip(other)
            }
        }
    }
}

/// `croupier.registry.v1`: discovery and watches.
pub mod registry {
    /// Version 1.
    pub mod v1 {
        tonic::include_proto!("croupier.registry.v1");
    }
}

/// `croupier.gateway.v1`: the frames between game clients and `croupier gateway`.
pub mod gateway {
    /// Version 1.
    pub mod v1 {
        tonic::include_proto!("croupier.gateway.v1");
    }
}

/// Encoded `FileDescriptorSet` of all Croupier protos, for `grpc.reflection`.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("croupier_descriptor");
