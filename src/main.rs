fn main() -> std::process::ExitCode {
    raregen::cli::main()
}
