//! The `surge` binary.

fn main() -> std::process::ExitCode {
    surge::cli::main()
}
