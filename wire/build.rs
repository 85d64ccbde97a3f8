//! Generates the prost types for `proto/binding.proto` with protox (pure Rust: no system `protoc`).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=../proto/binding.proto");
    let descriptors = protox::compile(["../proto/binding.proto"], ["../proto"])?;
    prost_build::Config::new().compile_fds(descriptors)?;
    Ok(())
}
