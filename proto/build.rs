//! Compiles `protos/HStream/Server/HStreamApi.proto` with protox (pure Rust), so building needs no
//! system `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "protos/HStream/Server/HStreamApi.proto";
    println!("cargo:rerun-if-changed={proto}");
    let descriptors = protox::compile([proto], ["protos"])?;
    tonic_prost_build::configure()
        .bytes(".hstream.server.BatchedRecord.payload")
        .bytes(".hstream.server.HStreamRecord.payload")
        .compile_fds(descriptors)?;
    Ok(())
}
