//! Compiles `protos/HStream/Server/HStreamApi.proto` and etcd's v3 API (`protos/etcd/`, client
//! side only) with protox (pure Rust), so building needs no system `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "protos/HStream/Server/HStreamApi.proto";
    println!("cargo:rerun-if-changed={proto}");
    let descriptors = protox::compile([proto], ["protos"])?;
    tonic_prost_build::configure()
        .bytes(".hstream.server.BatchedRecord.payload")
        .bytes(".hstream.server.HStreamRecord.payload")
        .compile_fds(descriptors)?;
    println!("cargo:rerun-if-changed=protos/etcd");
    let etcd = protox::compile(["rpc.proto"], ["protos/etcd"])?;
    tonic_prost_build::configure().build_server(false).compile_fds(etcd)?;
    Ok(())
}
