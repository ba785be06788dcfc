//! The `leasehold` command line, driven as a real binary in temporary workspaces: every test
//! runs twice, `local` on the workspace's database and `remote` through a real `leasehold serve`
//! on it (`--server`, `--token`), with the same output, JSON and exit codes.

// Each test file is compiled twice on purpose, once per mode.
#![allow(clippy::duplicate_mod)]

/// Commands open the workspace's database themselves.
#[path = "cli"]
mod local {
    /// Whether commands go through a server.
    pub const REMOTE: bool = false;

    #[path = "commands.rs"]
    mod commands;
    #[path = "errors.rs"]
    mod errors;
    #[path = "exec.rs"]
    mod exec;
    #[path = "local_only.rs"]
    mod local_only;
    #[path = "paths.rs"]
    mod paths;
    #[path = "stress.rs"]
    mod stress;
    #[path = "support.rs"]
    pub mod support;
}

/// Commands talk to a `leasehold serve` running on the workspace's database.
#[path = "cli"]
mod remote {
    /// Whether commands go through a server.
    pub const REMOTE: bool = true;

    #[path = "commands.rs"]
    mod commands;
    #[path = "errors.rs"]
    mod errors;
    #[path = "exec.rs"]
    mod exec;
    #[path = "paths.rs"]
    mod paths;
    #[path = "remote_only.rs"]
    mod remote_only;
    #[path = "stress.rs"]
    mod stress;
    #[path = "support.rs"]
    pub mod support;
}
