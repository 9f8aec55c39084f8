//! Compiles the protocol with protox, a pure-Rust protobuf compiler, so the
//! build needs no `protoc` on the machine.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "proto/logfleet/v1/logfleet.proto";
    println!("cargo:rerun-if-changed={proto}");
    let fds = protox::compile([proto], ["proto"])?;
    tonic_prost_build::configure()
        .bytes(".logfleet.v1.LineBatch.text")
        .bytes(".logfleet.v1.PushRequest.payload")
        // Labels are compared and hashed (stream identity).
        .message_attribute(".logfleet.v1.Label", "#[derive(PartialOrd, Ord)]")
        .message_attribute(".logfleet.v1.FileLabels", "#[derive(Eq, Hash)]")
        .compile_fds(fds)?;
    Ok(())
}
