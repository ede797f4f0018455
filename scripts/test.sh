#!/usr/bin/env bash
# The test command: unit tests, integration tests (real payhook binary, real Redis, real
# backends, the Java and PHP examples, fault injection), the examples' own smoke test, the
# Prometheus alert rules (promtool) and Grafana dashboard, and a short fuzzing run of every
# parser (FUZZ_SECONDS per target, default 10; 0 skips it).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
scripts/check-alerts.sh
examples/test-backends.sh
if [ "${FUZZ_SECONDS:-10}" != 0 ]; then
  FUZZ_SECONDS="${FUZZ_SECONDS:-10}" scripts/fuzz.sh
fi
# --show-output prints the fault suite's and the resource-bound test's summary lines.
cargo test --locked -- --show-output
