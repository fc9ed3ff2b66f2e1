//! Generates the gRPC code from `proto/weir/v1/weir.proto` with protox, a pure-Rust protobuf compiler, so building
//! needs no `protoc`; the file descriptor set is kept for gRPC server reflection.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "../proto/weir/v1/weir.proto";
    println!("cargo:rerun-if-changed={proto}");
    let descriptors = protox::compile([proto], ["../proto"])?;
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("weir_descriptor.bin"), prost::Message::encode_to_vec(&descriptors))?;
    // ReadingBatch is hand-written (`src/grpc/batch.rs`): it keeps each reading a slice of the received message.
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .extern_path(".weir.v1.ReadingBatch", "crate::grpc::batch::ReadingBatch")
        .compile_fds(descriptors)?;
    Ok(())
}
