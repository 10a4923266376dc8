fn main() -> Result<(), Box<dyn std::error::Error>> {
    // protox compiles the proto in Rust, so building needs no protoc binary.
    let fds = protox::compile(["proto/demo.proto"], ["proto"])?;
    tonic_prost_build::configure().compile_fds(fds)?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
