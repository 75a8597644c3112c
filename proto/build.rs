//! Generates the Rust code for Croupier's protos. Uses the vendored `protoc` unless `PROTOC` is set,
//! so a machine with only the Rust toolchain can build.

use std::path::PathBuf;

const PROTOS: &[&str] = &[
    "croupier/common/v1/common.proto",
    "croupier/control/v1/fleet.proto",
    "croupier/control/v1/assignment.proto",
    "croupier/control/v1/users.proto",
    "croupier/control/v1/control.proto",
    "croupier/function/v1/function.proto",
    "croupier/registry/v1/registry.proto",
    "croupier/gateway/v1/gateway.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    let mut config = tonic_prost_build::Config::new();
    let protoc = match std::env::var_os("PROTOC") {
        Some(p) => PathBuf::from(p),
        None => protoc_bin_vendored::protoc_bin_path()?,
    };
    config.protoc_executable(protoc);
    // Gateway payloads are shared between the many frames of a broadcast without copying.
    config.bytes([".croupier.gateway.v1.Frame.payload"]);
    // An inventory is large and rare among the tunnel's frames.
    config.boxed(".croupier.control.v1.AgentFrame.frame.inventory");
    // The inventory is stored and compared as JSON.
    config.type_attribute(
        ".croupier.control.v1.NodeInventory",
        "#[derive(serde::Serialize, serde::Deserialize)] #[serde(default)]",
    );
    for m in [
        "CpuInfo",
        "MemoryInfo",
        "GpuInfo",
        "DiskInfo",
        "NicInfo",
        "OsInfo",
        "KernelInfo",
        "RuntimeInfo",
    ] {
        config.type_attribute(
            format!(".croupier.control.v1.{m}"),
            "#[derive(serde::Serialize, serde::Deserialize)] #[serde(default)]",
        );
    }
    let vendored_include = protoc_bin_vendored::include_path()?;
    let includes = [PathBuf::from("."), vendored_include];
    let protos: Vec<PathBuf> = PROTOS.iter().map(PathBuf::from).collect();
    tonic_prost_build::configure()
        // No `Client::connect` constructor: it would clash with the `Connect` rpc; use `Client::new(channel)`.
        .build_transport(false)
        // prost's codec, except that an undecodable tunnel frame fails only its call.
        .codec_path("crate::codec::CroupierCodec")
        .file_descriptor_set_path(out.join("croupier_descriptor.bin"))
        .compile_with_config(config, &protos, &includes)?;
    for p in PROTOS {
        println!("cargo:rerun-if-changed={p}");
    }
    Ok(())
}
