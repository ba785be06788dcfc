//! The `leasehold` binary: the command line lives in [`leasehold::cli`].

fn main() -> std::process::ExitCode {
    leasehold::cli::main()
}
