/// mimalloc, not glibc's malloc: at thousands of jobs a second the pipeline's many
/// short-lived buffers (HTTP bodies, statement arguments, hex) spent a sixth of its
/// CPU in glibc's allocator (`docs/benchmarks.md`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    // With the `failpoints` feature, FAILPOINTS=name=action stops the process at exact
    // points (the crash tests); without it this is nothing.
    #[cfg(feature = "failpoints")]
    let _failpoints = fail::FailScenario::setup();
    raregen::cli::main()
}
