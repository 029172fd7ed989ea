//! The `droot-fleet` binary: parse flags, run, print the error chain once, exit.

fn main() -> std::process::ExitCode {
    droot_fleet::cli::main()
}
