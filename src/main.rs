//! The `reverify` binary: commands, settings, logging and exit codes. All logic
//! lives in the library.

mod cli;

fn main() -> std::process::ExitCode {
    cli::main()
}
