#!/usr/bin/env bash
# Runs every test: unit tests, the integration-test binary (conformance suite on SQLite and
# PostgreSQL, multi-process and multi-server tests, CLI, server) and the examples. Usable on a
# fresh machine and in CI.
set -euo pipefail
cd "$(dirname "$0")/.."

# The dashboard's end-to-end tests drive Debian's Chromium; install it if missing.
scripts/install-browser.sh
cargo build --locked --all-targets
# The PostgreSQL tests (the conformance suite's second store, multi-server tests) need a server:
# with-postgres.sh installs PostgreSQL if missing and runs the tests against a throwaway cluster.
# (Every target but the benches: cargo would run a harness-less bench in full.)
scripts/with-postgres.sh cargo test --locked --lib --bins --tests --examples
# A short smoke run of the comparison bench (leasehold's parts, dev build), so it cannot rot;
# it asserts no timing.
cargo test --locked --bench compare
# The example is part of the documentation: it must run to completion.
cargo run --locked --quiet --example lease_manager_example > /dev/null
