//! Compiles `lbsync/v1/*.proto` with the protoc shipped in `protoc-bin-vendored` (no system protoc),
//! and writes their file descriptor set to `OUT_DIR/lbsync_descriptor.bin` for server reflection.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=lbsync");
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    let well_known = protoc_bin_vendored::include_path()?;
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc);
    config.bytes(["."]);
    let out_dir =
        std::path::PathBuf::from(std::env::var_os("OUT_DIR").ok_or("OUT_DIR is not set")?);
    config.file_descriptor_set_path(out_dir.join("lbsync_descriptor.bin"));
    tonic_prost_build::configure().compile_with_config(
        config,
        &[std::path::PathBuf::from("lbsync/v1/sync.proto")],
        &[std::path::PathBuf::from("."), well_known],
    )?;
    Ok(())
}
