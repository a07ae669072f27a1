//! Compiles the vendored `proto/onnx.proto` into Rust types (in OUT_DIR) with pure-Rust tools:
//! protox parses the schema, prost-build generates the code, so no `protoc` is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/onnx.proto");
    let descriptors = protox::compile(["onnx.proto"], ["proto"])?;
    prost_build::Config::new().compile_fds(descriptors)?;
    Ok(())
}
