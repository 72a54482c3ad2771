fn main() -> std::process::ExitCode {
    // With the `failpoints` feature, FAILPOINTS=name=action stops the process at exact
    // points (the crash tests); without it this is nothing.
    #[cfg(feature = "failpoints")]
    let _failpoints = fail::FailScenario::setup();
    raregen::cli::main()
}
