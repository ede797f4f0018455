#!/usr/bin/env bash
# Runs payhook on conf/payhook.toml (embedded ledger, demo keys; no Redis needed).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh build   # only what building needs: the example's embedded ledger needs no Redis
exec cargo run --release --locked --bin payhook -- run --config conf/payhook.toml
