#!/usr/bin/env bash
# Runs payhook on conf/payhook.toml (embedded ledger, demo keys; no Redis needed).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec cargo run --release --locked --bin payhook -- run --config conf/payhook.toml
