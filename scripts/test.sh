#!/usr/bin/env bash
# The test command: unit tests, integration tests (real payhook binary, real Redis, real
# backends, the Java and PHP examples, fault injection), the examples' own smoke test, the
# Prometheus alert rules (promtool) and Grafana dashboard, and a short fuzzing run of every
# parser (FUZZ_SECONDS per target, default 10; 0 skips it).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
scripts/check-alerts.sh
# Packaging: unit, manifests, the compose stack rehearsed natively, and the image and compose
# quick start when a Docker daemon answers (else one SKIPPED line). Its schema and lint tools
# (~200 MB) are for `scripts/test-packaging.sh` run by hand.
cargo build --locked --bin payhook
PAYHOOK_BIN="${CARGO_TARGET_DIR:-target}/debug/payhook" PAYHOOK_PACKAGING_TOOLS=off scripts/test-packaging.sh
examples/test-backends.sh
# The 10-second smoke run skips AddressSanitizer: its build of every dependency is the test
# command's longest step (15 min against 9.6 without it on a slow 2-vCPU machine), and what a
# smoke run finds are panics and failed invariants, which libFuzzer catches either way.
if [ "${FUZZ_SECONDS:-10}" != 0 ]; then
  FUZZ_SECONDS="${FUZZ_SECONDS:-10}" FUZZ_SANITIZER="${FUZZ_SANITIZER:-none}" scripts/fuzz.sh
fi
# --show-output prints the fault suite's and the resource-bound test's summary lines.
cargo test --locked -- --show-output
