#!/usr/bin/env bash
# The test command: unit tests, integration tests (real payhook binary, real Redis, real
# backends, the Java and PHP examples), and the examples' own smoke test.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
examples/test-backends.sh
cargo test --locked "$@"
