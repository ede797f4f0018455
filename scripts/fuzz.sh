#!/usr/bin/env bash
# Fuzzes every parser that reads provider bytes, and the backend envelope (fuzz/, cargo-fuzz +
# libFuzzer). Exits non-zero when any target crashes (a panic, a failed invariant, a sanitizer
# report, a timeout or an out-of-memory).
#
#   scripts/fuzz.sh                        # every target for 10 s: the smoke run
#   FUZZ_SECONDS=600 scripts/fuzz.sh       # the longer run: 10 minutes per target
#   scripts/fuzz.sh wechat_v2_xml ...      # only these targets
#   FUZZ_SANITIZER=none scripts/fuzz.sh    # without AddressSanitizer (the test command's smoke
#                                          # run: a build about 40 % shorter; panics, failed
#                                          # invariants, timeouts and OOMs are still caught)
#
# The toolchain is stable: cargo-fuzz's nightly `-Z` flags are unlocked with RUSTC_BOOTSTRAP=1.
# Builds go to fuzz/target, never to the main target/ (the first build compiles every dependency
# again, with sanitizer flags: several minutes). Seeds are committed under fuzz/corpus/<target>/
# (made by fuzz/seeds.py from tests/fixtures/vectors), dictionaries under fuzz/dict/; what the
# fuzzer adds goes to
# fuzz/target/corpus/<target>/ and is kept between runs; crashes land in fuzz/artifacts/<target>/,
# logs in fuzz/target/logs/. Reproduce a crash with
#   RUSTC_BOOTSTRAP=1 cargo fuzz run <target> fuzz/artifacts/<target>/crash-…
# and see what an input decodes to with PAYHOOK_FUZZ_TRACE=1 in front of that.
set -euo pipefail
cd "$(dirname "$0")/.."
export RUSTC_BOOTSTRAP=1

seconds="${FUZZ_SECONDS:-10}"
sanitizer="${FUZZ_SANITIZER:-address}"
if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked
fi

if [ "$#" -gt 0 ]; then
    targets=("$@")
else
    mapfile -t targets < <(cargo fuzz list)
fi

build_start=$(date +%s)
cargo fuzz build --sanitizer "$sanitizer"
echo "fuzz: build ($sanitizer sanitizer) took $(( $(date +%s) - build_start )) s"

mkdir -p fuzz/target/logs
failed=()
for target in "${targets[@]}"; do
    work="fuzz/target/corpus/$target"
    log="fuzz/target/logs/$target.log"
    mkdir -p "$work" "fuzz/corpus/$target"
    options=(-max_total_time="$seconds" -timeout=30 -print_final_stats=1)
    if [ -f "fuzz/dict/$target.dict" ]; then
        options+=(-dict="fuzz/dict/$target.dict")
    fi
    echo "fuzz: $target for ${seconds} s"
    # New inputs go to the first corpus directory, so the committed seeds stay as they are.
    if cargo fuzz run --sanitizer "$sanitizer" "$target" "$work" "fuzz/corpus/$target" -- "${options[@]}" >"$log" 2>&1; then
        stat() { sed -n "s/^stat::$1: *//p" "$log" | tail -1; }
        echo "fuzz: $target ok: $(stat number_of_executed_units) runs, $(stat average_exec_per_sec) exec/s," \
            "$(stat new_units_added) new units, corpus $(find "$work" -type f | wc -l) files, peak RSS $(stat peak_rss_mb) MB"
    else
        echo "fuzz: $target FAILED, the end of $log:"
        tail -n 60 "$log"
        failed+=("$target")
    fi
done

if [ "${#failed[@]}" -gt 0 ]; then
    echo "fuzz: crashed: ${failed[*]} (inputs in fuzz/artifacts/)"
    exit 1
fi
echo "fuzz: all ${#targets[@]} targets ran ${seconds} s each without a crash"
