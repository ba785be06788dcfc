#!/usr/bin/env bash
# Runs every test: unit tests, the integration-test binary (conformance suite, multi-process
# test, CLI, server) and the examples. Usable on a fresh machine and in CI.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --locked --all-targets
cargo test --locked --all-targets
# The example is part of the documentation: it must run to completion.
cargo run --locked --quiet --example lease_manager_example > /dev/null
