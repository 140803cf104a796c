//! Compiles proto/entry.proto with protox (a pure-Rust protobuf compiler), so building needs no
//! system protoc: a fresh machine needs nothing beyond cargo.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/entry.proto");
    let descriptors = protox::compile(["entry.proto"], ["proto"])?;
    prost_build::Config::new()
        // `line` becomes `Bytes`, so decoding a frame borrows from the read buffer instead of
        // copying every line.
        .bytes(["."])
        .compile_fds(descriptors)?;
    Ok(())
}
