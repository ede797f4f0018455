#!/usr/bin/env bash
# Comparative benchmark: payhook vs nginx proxy_pass vs the bare backend (docs/performance.md).
#
# Starts a private Redis, an nginx backend answering {"code":0}, nginx as a proxy_pass to it and
# payhook (Redis ledger) in front of the same backend; pre-signs fresh WeChat Pay v3
# notifications (one new order each); drives the three paths with wrk at the same
# threads x connections; then a paced run at half of payhook's measured maximum, straight to the
# backend and through payhook; and, for context, nginx's proxy_pass with nginx's defaults (a new
# backend connection per request). Prints one table and key=value lines:
#   ratio_payhook_vs_nginx= ratio_payhook_vs_nginx_default_proxy= added_p50_ms= added_p99_ms=
#   half_load_added_p99_ms= cpu_us_per_notification= peak_rss_mib=
# Exits non-zero when the bench itself is invalid (a path answered non-2xx or had socket errors,
# payhook did not forward every notification, or the pre-signed requests ran out). Missing a
# goal is reported, not an error.
#
# Env: DURATION (10s), THREADS (2), CONNECTIONS (32), PAYHOOK_BIN (default: build with
# `cargo build --release --locked`), PAYHOOK_THREADS (2), NGINX_WORKERS (2),
# PAYHOOK_LOG (info, payhook's default), N_FACTOR (2: pre-signed requests per expected one),
# WAIT_IDLE (60: seconds to wait for an idle machine before starting), NICE (0; e.g. -10 runs
# Redis, nginx, payhook, wrk and the pre-signer at that niceness, for a machine that is not
# idle: needs root), KEEP_TMP=1 keeps the temp dir (configs, logs, wrk outputs, request files),
# PERF_RECORD ("" ; e.g. "-g" or "--call-graph dwarf") records payhook with `perf record` during
# its max run into the kept temp dir (the recording itself costs throughput: a profile, not a figure),
# ONLY_PAYHOOK=1 stops after payhook's max run and prints one line (payhook_rps= p50_ms= p99_ms=
# cpu_us_per_notification= redis_us_per_notification= redis_command_us_per_notification=): for
# comparing two builds, run by run.
# CALLGRIND=1 runs payhook under valgrind's callgrind instead (wrk -t1 -c4 unless THREADS and
# CONNECTIONS say otherwise; DURATION 20s) and prints `instructions_per_notification=`: the
# instructions payhook executes per forwarded notification, all threads, counted after a warm-up.
# Unlike time, the count does not move with what else the VM runs, so it can show a change of a
# few per cent between two builds in one run each (it weighs every instruction alike: a saving
# in memcpy counts for more than it takes in time).
# SYSCALLS=1 counts payhook's system calls during its max and half-load runs (`perf stat` on the
# syscall tracepoints: exact counts, not samples) and prints `syscalls_per_notification=`,
# `half_load_syscalls_per_notification=` and the main calls per notification: the wake-up side of
# the CPU (a third of it is the kernel's) that callgrind does not see. The counting itself costs
# a little time per call, so that run's CPU figures read a few per cent high.
# REDIS_FSYNC (off) runs the ledger's Redis with `appendonly yes` and that `appendfsync` (`always`,
# the production setting docs/production.md asks for, or `everysec`); off: no persistence.
# REDIS_SOCKET (tcp) = unix puts the ledger's Redis on a Unix socket in the temp dir instead of a
# loopback TCP port (payhook's `url = "redis+unix:///…"`): what a Redis on payhook's own host costs
# without the TCP stack. The backend stays on TCP for every path.
# HALF_RATE (half of payhook's measured maximum) fixes the half-load run's rate: wake-ups per
# notification grow as the rate falls, so two builds' half-load figures compare at one rate.
set -euo pipefail

CALLGRIND=${CALLGRIND:-0}
if [[ $CALLGRIND == 1 ]]; then
    DURATION=${DURATION:-20s}; THREADS=${THREADS:-1}; CONNECTIONS=${CONNECTIONS:-4}
fi
DURATION=${DURATION:-10s}
THREADS=${THREADS:-2}
CONNECTIONS=${CONNECTIONS:-32}
PAYHOOK_THREADS=${PAYHOOK_THREADS:-2}
NGINX_WORKERS=${NGINX_WORKERS:-2}
N_FACTOR=${N_FACTOR:-2}
WAIT_IDLE=${WAIT_IDLE:-60}
NICE=${NICE:-0}
PERF_RECORD=${PERF_RECORD:-}
ONLY_PAYHOOK=${ONLY_PAYHOOK:-0}
SYSCALLS=${SYSCALLS:-0}
REDIS_FSYNC=${REDIS_FSYNC:-off}
REDIS_SOCKET=${REDIS_SOCKET:-tcp}
# The calls a notification makes (provider, backend and Redis sockets, the log line, wake-ups).
SYSCALL_NAMES=(recvfrom sendto writev write epoll_wait futex getpeername)
[[ -z $PERF_RECORD ]] || KEEP_TMP=1
export PAYHOOK_LOG=${PAYHOOK_LOG:-info}

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
COMPARE=$HERE/compare
KEYS=$REPO/tests/fixtures/keys

log() { printf '[compare] %s\n' "$*" >&2; }
die() { printf '[compare] ERROR: %s\n' "$*" >&2; exit 1; }
calc() { awk "BEGIN { printf $1 }"; }

secs() { # 10s / 2m / 90 -> seconds
    case $1 in
        *ms) die "DURATION must be whole seconds or minutes: $1" ;;
        *s) echo "${1%s}" ;;
        *m) echo $(( ${1%m} * 60 )) ;;
        *) echo "$1" ;;
    esac
}
DUR_S=$(secs "$DURATION")
[[ $DUR_S =~ ^[0-9]+$ && $DUR_S -ge 1 ]] || die "bad DURATION=$DURATION"
case $REDIS_FSYNC in
    off) REDIS_PERSIST=(--appendonly no); REDIS_DESC="no persistence" ;;
    always|everysec) REDIS_PERSIST=(--appendonly yes --appendfsync "$REDIS_FSYNC"); REDIS_DESC="appendfsync $REDIS_FSYNC" ;;
    *) die "REDIS_FSYNC must be off, everysec or always: $REDIS_FSYNC" ;;
esac
[[ $REDIS_SOCKET == tcp || $REDIS_SOCKET == unix ]] || die "REDIS_SOCKET must be tcp or unix: $REDIS_SOCKET"
(( CONNECTIONS >= THREADS )) || die "CONNECTIONS must be >= THREADS"

# ---------------------------------------------------------------- tools
APT_UPDATED=0
apt_install() {
    command -v apt-get >/dev/null || die "missing $*; install it (no apt-get here)"
    if (( APT_UPDATED == 0 )); then
        log "apt-get update"
        apt-get update -qq >/dev/null
        APT_UPDATED=1
    fi
    log "apt-get install $*"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}
need=()
command -v wrk >/dev/null || need+=(wrk)
command -v nginx >/dev/null || [[ -x /usr/sbin/nginx ]] || need+=(nginx-light)
command -v redis-server >/dev/null || need+=(redis-server)
command -v curl >/dev/null || need+=(curl)
command -v python3 >/dev/null || need+=(python3)
[[ $CALLGRIND == 0 ]] || command -v callgrind_control >/dev/null || need+=(valgrind)
[[ $SYSCALLS == 0 ]] || command -v perf >/dev/null || need+=(linux-perf)
if (( ${#need[@]} )); then apt_install "${need[@]}"; fi
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
if ! python3 -c 'import cryptography' 2>/dev/null; then
    log "installing the Python cryptography package"
    python3 -m pip install --quiet cryptography 2>/dev/null || apt_install python3-cryptography
    python3 -c 'import cryptography' || die "python3 cannot import cryptography"
fi

if [[ -z ${PAYHOOK_BIN:-} ]]; then
    log "cargo build --release --locked"
    (cd "$REPO" && cargo build --release --locked --quiet)
    PAYHOOK_BIN=${CARGO_TARGET_DIR:-$REPO/target}/release/payhook
fi
[[ -x $PAYHOOK_BIN ]] || die "no payhook binary at $PAYHOOK_BIN"

# ---------------------------------------------------------------- processes
TMP=$(mktemp -d "${TMPDIR:-/tmp}/payhook-compare.XXXXXX") # 0700: payhook wants a private upgrade_sock dir
chmod 700 "$TMP"
PIDS=()
# NICE also lowers the niceness of this session's scheduler autogroup (the kernel shares the CPU
# between sessions first, so a process's own niceness only ranks it within its session); the
# old value is restored on exit.
AUTOGROUP_OLD=""
if [[ $NICE != 0 && -w /proc/$$/autogroup ]]; then
    AUTOGROUP_OLD=$(awk '{ print $3 }' "/proc/$$/autogroup")
    echo "$NICE" >"/proc/$$/autogroup"
fi
cleanup() {
    local rc=$?
    [[ -z $AUTOGROUP_OLD ]] || echo "$AUTOGROUP_OLD" >"/proc/$$/autogroup" || true
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    if [[ ${KEEP_TMP:-0} == 1 || $rc -ne 0 ]]; then log "files kept in $TMP"; else rm -rf "$TMP"; fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# up URL PID: 0 once URL answers (and PID still runs a moment later: a port taken by another
# process in the meantime makes ours exit), 1 if PID exited; dies if it never answers.
up() {
    local _
    for _ in $(seq 1 400); do
        if [[ $1 == redis ]]; then
            redis-cli "${REDIS_CLI[@]}" ping >/dev/null 2>&1 && { sleep 0.2; kill -0 "$2" 2>/dev/null && return 0; }
        else
            curl -s -o /dev/null --max-time 1 "$1" && { sleep 0.2; kill -0 "$2" 2>/dev/null && return 0; }
        fi
        kill -0 "$2" 2>/dev/null || { wait "$2" 2>/dev/null || true; return 1; }
        sleep 0.05
    done
    die "$1 did not answer within 20 s (see $TMP)"
}

REDIS_URL="" REDIS_CLI=() BACKEND_PORT="" PROXY_PORT="" DEFAULT_PORT="" PH_PORT="" PH_ADMIN=""
fill() { # template out: replace @KEY@ placeholders
    sed -e "s|@DIR@|$TMP|g" -e "s|@KEYS@|$KEYS|g" -e "s|@WORKERS@|$NGINX_WORKERS|g" \
        -e "s|@THREADS@|$PAYHOOK_THREADS|g" -e "s|@REDIS_URL@|$REDIS_URL|g" \
        -e "s|@BACKEND_PORT@|$BACKEND_PORT|g" -e "s|@LISTEN@|$PH_PORT|g" -e "s|@ADMIN@|$PH_ADMIN|g" \
        -e "s|@PORT@|${3:-}|g" -e "s|@USER@|$USER_LINE|g" "$1" >"$2"
}
USER_LINE=""
(( EUID == 0 )) && USER_LINE="user root;"

N=()
[[ $NICE == 0 ]] || N=(nice -n "$NICE")
UNDER=()
[[ $CALLGRIND == 0 ]] || UNDER=(valgrind --tool=callgrind --callgrind-out-file="$TMP/callgrind.out")

# Each server gets a free port; when another process takes it first, the server exits and is
# started again on another one.
for try in 1 2 3 4 5; do
    if [[ $REDIS_SOCKET == unix ]]; then
        REDIS_CLI=(-s "$TMP/redis.sock"); REDIS_URL="redis+unix://$TMP/redis.sock"
        REDIS_LISTEN=(--port 0 --unixsocket "$TMP/redis.sock" --unixsocketperm 700)
    else
        REDIS_PORT=$(free_port)
        REDIS_CLI=(-p "$REDIS_PORT"); REDIS_URL="redis://127.0.0.1:$REDIS_PORT/0"
        REDIS_LISTEN=(--port "$REDIS_PORT" --bind 127.0.0.1)
    fi
    "${N[@]}" redis-server "${REDIS_LISTEN[@]}" --save "" "${REDIS_PERSIST[@]}" --dir "$TMP" \
        --logfile "$TMP/redis.log" &
    REDIS_PID=$!; PIDS+=("$REDIS_PID")
    if up redis "$REDIS_PID"; then break; fi
    (( try < 5 )) || die "redis-server did not start (see $TMP/redis.log)"
done
# start_nginx NAME: nginx with $COMPARE/nginx-NAME.conf on a free port; sets NGINX_PORT, NGINX_PID.
start_nginx() {
    local try
    for try in 1 2 3 4 5; do
        NGINX_PORT=$(free_port)
        fill "$COMPARE/nginx-$1.conf" "$TMP/nginx-$1.conf" "$NGINX_PORT"
        "${N[@]}" "$NGINX" -p "$TMP" -c "$TMP/nginx-$1.conf" -e "$TMP/$1-error.log" &
        NGINX_PID=$!; PIDS+=("$NGINX_PID")
        if up "http://127.0.0.1:$NGINX_PORT/" "$NGINX_PID"; then return 0; fi
    done
    die "nginx $1 did not start (see $TMP/$1-error.log)"
}
start_nginx backend; BACKEND_PORT=$NGINX_PORT; BACKEND_PID=$NGINX_PID
start_nginx proxy; PROXY_PORT=$NGINX_PORT; PROXY_PID=$NGINX_PID
start_nginx proxy-default; DEFAULT_PORT=$NGINX_PORT; DEFAULT_PID=$NGINX_PID
for try in 1 2 3 4 5; do
    PH_PORT=$(free_port); PH_ADMIN=$(free_port)
    while [[ $PH_PORT == "$PH_ADMIN" ]]; do PH_ADMIN=$(free_port); done
    fill "$COMPARE/payhook.toml" "$TMP/payhook.toml"
    "${N[@]}" "${UNDER[@]}" "$PAYHOOK_BIN" run --config "$TMP/payhook.toml" >"$TMP/payhook.out" 2>>"$TMP/payhook.log" &
    PH_PID=$!; PIDS+=("$PH_PID")
    if up "http://127.0.0.1:$PH_ADMIN/healthz" "$PH_PID" && up "http://127.0.0.1:$PH_PORT/" "$PH_PID"; then break; fi
    (( try < 5 )) || die "payhook did not start (see $TMP/payhook.log)"
done

BACKEND_URL="http://127.0.0.1:$BACKEND_PORT"
PROXY_URL="http://127.0.0.1:$PROXY_PORT"
DEFAULT_URL="http://127.0.0.1:$DEFAULT_PORT"
PH_URL="http://127.0.0.1:$PH_PORT"
BACKEND_PATH=/pay/notify
NOTIFY_PATH=/notify/wx/goods

# ---------------------------------------------------------------- measurement helpers
CLK_TCK=$(getconf CLK_TCK)
# CPU time (utime + stime, all threads) of a process and its children still running, in ticks.
cpu_ticks() {
    local total=0 pid t
    for pid in "$1" $(pgrep -P "$1" || true); do
        t=$(sed 's/^.*) //' "/proc/$pid/stat" | awk '{ print $12 + $13 }')
        total=$(( total + t ))
    done
    echo "$total"
}
# VmHWM (peak resident set) in KiB, summed over a process and its children.
hwm_kib() {
    local total=0 pid v
    for pid in "$1" $(pgrep -P "$1" || true); do
        v=$(awk '/^VmHWM:/ { print $2 }' "/proc/$pid/status")
        total=$(( total + v ))
    done
    echo "$total"
}
# payhook_notifications_total: "forwarded other" (sums over every label set).
notif_counts() {
    curl -sf "http://127.0.0.1:$PH_ADMIN/metrics" | awk '
        /^payhook_notifications_total\{/ { if ($0 ~ /outcome="forwarded"/) f += $NF; else o += $NF }
        END { printf "%d %d\n", f, o }'
}

presign() { # file count prefix
    "${N[@]}" python3 "$COMPARE/presign.py" --key "$KEYS/wx_platform_a.key.pem" --out "$1" --count "$2" \
        --prefix "$3" 2> >(sed 's/^/[compare] /' >&2)
}

# System-wide busy ticks (all but idle and iowait; irq and softirq included, as a process's stime
# includes the interrupts taken while it ran) and all ticks, from /proc/stat.
# Steal (time the hypervisor gave this VM's CPUs to others) is counted apart.
sys_ticks() { awk '/^cpu / { print $2 + $3 + $4 + $7 + $8, $2 + $3 + $4 + $5 + $6 + $7 + $8 + $9, $9 }' /proc/stat; }
# Ticks of everything this bench runs: its servers, and this shell with its waited-for children (wrk).
ours_ticks() {
    local self
    self=$(sed 's/^.*) //' "/proc/$$/stat" | awk '{ print $12 + $13 + $14 + $15 }')
    echo $(( self + $(cpu_ticks "$REDIS_PID") + $(cpu_ticks "$BACKEND_PID") + $(cpu_ticks "$PROXY_PID") + $(cpu_ticks "$DEFAULT_PID") + $(cpu_ticks "$PH_PID") ))
}
WARNINGS=()
declare -A R
ms() { calc "\"%.2f\", $1 / 1000"; }
mib() { calc "\"%.1f\", $1 / 1024"; }
# NAME DIVISOR: that run's CPU of the measured server, in us per request.
cpu_per() { calc "\"%.1f\", ${R[${1}_cpu_ticks]} * 1e6 / $CLK_TCK / $2"; }
# NAME: Redis' CPU in that payhook run, in us per forwarded notification.
redis_per() { calc "\"%.1f\", ${R[${1}_redis_ticks]} * 1e6 / $CLK_TCK / ${R[${1}_forwarded]}"; }
# Microseconds Redis spent inside commands (its INFO commandstats), summed over all commands.
redis_command_usec() { redis-cli "${REDIS_CLI[@]}" INFO commandstats | awk -F'[=,]' '/^cmdstat_/ { u += $4 } END { print u + 0 }'; }
redis_command_per() { calc "\"%.1f\", ${R[${1}_redis_usec]} / ${R[${1}_forwarded]}"; }
# run NAME URL PATH FILE DURATION_S [RATE] [CPU_PID]: wrk, results into R[NAME_*].
run() {
    local name=$1 url=$2 path=$3 file=$4 dur=$5 rate=${6:-0} cpu_pid=${7:-}
    local out=$TMP/wrk-$name.txt before after kv busy0 all0 busy1 all1 ours0 ours1 steal0 steal1
    [[ -n $cpu_pid ]] && before=$(cpu_ticks "$cpu_pid")
    ours0=$(ours_ticks); read -r busy0 all0 steal0 < <(sys_ticks)
    "${N[@]}" wrk -t "$THREADS" -c "$CONNECTIONS" -d "${dur}s" --timeout 5s -s "$COMPARE/notify.lua" "$url$path" \
        -- "$file" "$path" "$THREADS" "$rate" >"$out" 2>&1 || { cat "$out" >&2; die "wrk failed ($name)"; }
    sleep 0.5 # requests still in flight when wrk stopped
    [[ -n $cpu_pid ]] && after=$(cpu_ticks "$cpu_pid") && R[${name}_cpu_ticks]=$(( after - before ))
    read -r busy1 all1 steal1 < <(sys_ticks); ours1=$(ours_ticks)
    R[${name}_other_pct]=$(calc "\"%.0f\", (($busy1 - $busy0) - ($ours1 - $ours0)) * 100 / ($all1 - $all0 + 1e-9)")
    R[${name}_bench_pct]=$(calc "\"%.0f\", ($ours1 - $ours0) * 100 / ($all1 - $all0 + 1e-9)")
    R[${name}_steal_pct]=$(calc "\"%.0f\", ($steal1 - $steal0) * 100 / ($all1 - $all0 + 1e-9)")
    if [[ $name != cal_* ]]; then
        (( R[${name}_other_pct] <= 5 )) ||
            WARNINGS+=("$name: processes outside this bench used ~${R[${name}_other_pct]}% of the CPU during the run")
        (( R[${name}_steal_pct] <= 5 )) ||
            WARNINGS+=("$name: the hypervisor took ~${R[${name}_steal_pct]}% of the CPU (steal) during the run")
    fi
    local line
    line=$(grep '^BENCH ' "$out") || { cat "$out" >&2; die "no result from wrk ($name)"; }
    for kv in ${line#BENCH }; do R[${name}_${kv%%=*}]=${kv#*=}; done
    R[${name}_rps]=$(calc "\"%.0f\", ${R[${name}_requests]} / (${R[${name}_duration_us]} / 1e6)")
    R[${name}_errors]=$(( R[${name}_connect] + R[${name}_read] + R[${name}_write] + R[${name}_timeout] ))
    log "$name: ${R[${name}_rps]} req/s, p50 ${R[${name}_p50_us]} us, p99 ${R[${name}_p99_us]} us, non-2xx ${R[${name}_non2xx]}, socket errors ${R[${name}_errors]}"
}
INVALID=()
check_clean() { # name
    (( R[${1}_non2xx] == 0 )) || INVALID+=("$1: ${R[${1}_non2xx]} non-2xx responses")
    (( R[${1}_errors] == 0 )) || INVALID+=("$1: ${R[${1}_errors]} socket errors (connect/read/write/timeout)")
}
# perf_during NAME DURATION_S: in the background, perf attached to payhook over the run (and the
# 0.5 s after it that `run` waits for): its system calls counted into $TMP/syscalls-NAME.csv
# (SYSCALLS=1) and, for the max run, a recording into $TMP/perf.data (PERF_RECORD). Sets PERF_PIDS.
perf_during() {
    local events=raw_syscalls:sys_enter call
    PERF_PIDS=()
    if [[ $SYSCALLS == 1 ]]; then
        for call in "${SYSCALL_NAMES[@]}"; do events+=",syscalls:sys_enter_$call"; done
        perf stat -x, -e "$events" -o "$TMP/syscalls-$1.csv" -p "$PH_PID" -- sleep "$2.5" 2>"$TMP/perf-$1.log" &
        PERF_PIDS+=($!)
    fi
    if [[ -n $PERF_RECORD && $1 == payhook ]]; then
        # shellcheck disable=SC2086 # PERF_RECORD is a list of perf options
        perf record $PERF_RECORD -o "$TMP/perf.data" -p "$PH_PID" -- sleep "$2" 2>"$TMP/perf.log" &
        PERF_PIDS+=($!)
    fi
}
# syscalls_per NAME: "total call=n call=n ..." per forwarded notification of that run.
syscalls_per() {
    awk -F, -v n="${R[${1}_forwarded]}" '
        $3 == "raw_syscalls:sys_enter" { total = $1 }
        $3 ~ /^syscalls:sys_enter_/ { sub(/^syscalls:sys_enter_/, "", $3); calls = calls sprintf(" %s=%.2f", $3, $1 / n) }
        END { if (total == "") exit 1; printf "%.2f%s\n", total / n, calls }' "$TMP/syscalls-$1.csv" ||
        die "perf stat counted nothing (see $TMP/perf-$1.log)"
}
# run_payhook NAME FILE DURATION_S [RATE]: a payhook run checked against payhook's own metrics.
run_payhook() {
    local name=$1 f0 o0 f1 o1 r0 u0
    read -r f0 o0 < <(notif_counts)
    r0=$(cpu_ticks "$REDIS_PID") u0=$(redis_command_usec)
    perf_during "$name" "$3"
    run "$name" "$PH_URL" "$NOTIFY_PATH" "$2" "$3" "${4:-0}" "$PH_PID"
    local pid
    for pid in "${PERF_PIDS[@]}"; do wait "$pid" || die "perf failed (see $TMP/perf*.log)"; done
    R[${name}_redis_ticks]=$(( $(cpu_ticks "$REDIS_PID") - r0 ))
    R[${name}_redis_usec]=$(( $(redis_command_usec) - u0 ))
    read -r f1 o1 < <(notif_counts)
    R[${name}_forwarded]=$(( f1 - f0 ))
    R[${name}_not_forwarded]=$(( o1 - o0 ))
    check_clean "$name"
    (( R[${name}_wrapped] == 0 )) || INVALID+=("$name: pre-signed requests ran out (${R[${name}_wrapped]} wraps); raise N_FACTOR")
    (( R[${name}_not_forwarded] == 0 )) || INVALID+=("$name: ${R[${name}_not_forwarded]} notifications not forwarded (see payhook_notifications_total)")
    (( R[${name}_forwarded] >= R[${name}_requests] )) || INVALID+=("$name: forwarded ${R[${name}_forwarded]} < acknowledged ${R[${name}_requests]}")
}

# Waits (up to WAIT_IDLE seconds) for 3 quiet seconds in a row: < 10 % of the CPU busy.
wait_idle() {
    local waited=0 quiet=0 busy0 all0 busy1 all1
    while (( waited < WAIT_IDLE )); do
        read -r busy0 all0 _ < <(sys_ticks); sleep 1; read -r busy1 all1 _ < <(sys_ticks)
        waited=$(( waited + 1 ))
        if (( (busy1 - busy0) * 100 <= 10 * (all1 - all0) )); then
            quiet=$(( quiet + 1 )); (( quiet < 3 )) || return 0
        else
            quiet=0
        fi
    done
    (( WAIT_IDLE == 0 )) || log "the machine is still busy after ${WAIT_IDLE}s; going on (see the other% column)"
}

# ---------------------------------------------------------------- runs
log "waiting for an idle machine (up to ${WAIT_IDLE}s)"
wait_idle
LOAD_START=$(cut -d' ' -f1 /proc/loadavg)
RUN_ID="bench-$(date +%s)-$$"
CAL_S=2
CAL_N=16000

if [[ $CALLGRIND == 1 ]]; then
    log "callgrind: warm-up, then counting payhook's instructions for ${DUR_S}s"
    presign "$TMP/cal.tsv" 2000 "$RUN_ID-cal"
    run cal_payhook "$PH_URL" "$NOTIFY_PATH" "$TMP/cal.tsv" 3
    presign "$TMP/max.tsv" $(( DUR_S * 1000 )) "$RUN_ID-max"
    callgrind_control -z "$PH_PID" >/dev/null
    run_payhook payhook "$TMP/max.tsv" "$DUR_S"
    callgrind_control -d "$PH_PID" >/dev/null
    (( ${#INVALID[@]} == 0 )) || die "invalid run: ${INVALID[*]}"
    IR=$(awk '/^summary:/ { print $2 }' "$TMP/callgrind.out.1")
    echo "instructions_per_notification=$(( IR / R[payhook_forwarded] )) notifications=${R[payhook_forwarded]}"
    exit 0
fi

log "calibration / warm-up: $CAL_N notifications, ${CAL_S}s per path"
presign "$TMP/cal.tsv" "$CAL_N" "$RUN_ID-cal"
run cal_direct "$BACKEND_URL" "$BACKEND_PATH" "$TMP/cal.tsv" "$CAL_S"
run cal_nginx "$PROXY_URL" "$NOTIFY_PATH" "$TMP/cal.tsv" "$CAL_S"
read -r f0 _ < <(notif_counts)
run cal_payhook "$PH_URL" "$NOTIFY_PATH" "$TMP/cal.tsv" "$CAL_S"
read -r f1 _ < <(notif_counts)
CAL_RATE=$(( (f1 - f0) / CAL_S ))
(( R[cal_payhook_wrapped] == 0 )) || { log "calibration ran out of requests; assuming twice its rate"; CAL_RATE=$(( CAL_RATE * 2 )); }
(( CAL_RATE > 0 )) || die "payhook forwarded nothing in calibration (see $TMP/payhook.log)"

N_MAX=$(calc "\"%d\", $CAL_RATE * $DUR_S * $N_FACTOR + 50 * $CONNECTIONS")
log "payhook calibrated at ~$CAL_RATE notifications/s; pre-signing $N_MAX for the ${DUR_S}s run"
presign "$TMP/max.tsv" "$N_MAX" "$RUN_ID-max"
# payhook first: the timestamps are freshest (payhook allows 5 minutes of clock skew).
run_payhook payhook "$TMP/max.tsv" "$DUR_S"
[[ -z $PERF_RECORD ]] || log "profile of payhook's max run: perf report -i $TMP/perf.data"
if [[ $ONLY_PAYHOOK == 1 ]]; then
    (( ${#INVALID[@]} == 0 )) || die "invalid run: ${INVALID[*]}"
    echo "payhook_rps=${R[payhook_rps]} p50_ms=$(ms "${R[payhook_p50_us]}") p99_ms=$(ms "${R[payhook_p99_us]}")" \
        "cpu_us_per_notification=$(cpu_per payhook "${R[payhook_forwarded]}") redis_us_per_notification=$(redis_per payhook) redis_command_us_per_notification=$(redis_command_per payhook)" \
        "bench_pct=${R[payhook_bench_pct]} other_pct=${R[payhook_other_pct]}"
    # An assignment, not `< <(…)`: a failed count then stops the script (set -e).
    [[ $SYSCALLS == 0 ]] || { counts=$(syscalls_per payhook); echo "syscalls_per_notification=$counts"; }
    exit 0
fi
run nginx "$PROXY_URL" "$NOTIFY_PATH" "$TMP/max.tsv" "$DUR_S" 0 "$PROXY_PID"
check_clean nginx
# Context only: errors here (e.g. loopback ports exhausted by a connection per request) are reported, not fatal.
run nginx_default "$DEFAULT_URL" "$NOTIFY_PATH" "$TMP/max.tsv" "$DUR_S" 0 "$DEFAULT_PID"
(( R[nginx_default_non2xx] + R[nginx_default_errors] == 0 )) ||
    WARNINGS+=("nginx_default: ${R[nginx_default_non2xx]} non-2xx, ${R[nginx_default_errors]} socket errors; its row is context only")
run direct "$BACKEND_URL" "$BACKEND_PATH" "$TMP/max.tsv" "$DUR_S" 0 "$BACKEND_PID"
check_clean direct

HALF_RATE=${HALF_RATE:-$(( R[payhook_rps] / 2 ))}
(( HALF_RATE >= THREADS )) || die "payhook's rate is too low for a half-load run"
N_HALF=$(calc "\"%d\", $HALF_RATE * $DUR_S * 1.2 + 50 * $CONNECTIONS")
log "half load: $HALF_RATE/s for ${DUR_S}s; pre-signing $N_HALF"
presign "$TMP/half.tsv" "$N_HALF" "$RUN_ID-half"
run_payhook half_payhook "$TMP/half.tsv" "$DUR_S" "$HALF_RATE"
run half_direct "$BACKEND_URL" "$BACKEND_PATH" "$TMP/half.tsv" "$DUR_S" "$HALF_RATE"
check_clean half_direct
for n in half_payhook half_direct; do
    achieved=$(calc "\"%d\", ${R[${n}_rps]} >= 0.95 * $HALF_RATE")
    (( achieved )) || INVALID+=("$n: achieved ${R[${n}_rps]}/s of the fixed $HALF_RATE/s")
done

PH_HWM=$(hwm_kib "$PH_PID")
PROXY_HWM=$(hwm_kib "$PROXY_PID")
DEFAULT_HWM=$(hwm_kib "$DEFAULT_PID")
BACKEND_HWM=$(hwm_kib "$BACKEND_PID")
REDIS_HWM=$(hwm_kib "$REDIS_PID")
LOAD_END=$(cut -d' ' -f1 /proc/loadavg)

# ---------------------------------------------------------------- report

RATIO=$(calc "\"%.2f\", ${R[payhook_rps]} / ${R[nginx_rps]}")
RATIO_DEFAULT=$(calc "\"%.2f\", ${R[payhook_rps]} / ${R[nginx_default_rps]}")
ADDED_P50=$(calc "\"%.2f\", (${R[payhook_p50_us]} - ${R[direct_p50_us]}) / 1000")
ADDED_P99=$(calc "\"%.2f\", (${R[payhook_p99_us]} - ${R[direct_p99_us]}) / 1000")
HALF_ADDED_P50=$(calc "\"%.2f\", (${R[half_payhook_p50_us]} - ${R[half_direct_p50_us]}) / 1000")
HALF_ADDED_P99=$(calc "\"%.2f\", (${R[half_payhook_p99_us]} - ${R[half_direct_p99_us]}) / 1000")
CPU_US=$(cpu_per payhook "${R[payhook_forwarded]}")
HALF_CPU_US=$(cpu_per half_payhook "${R[half_payhook_forwarded]}")
PEAK_RSS=$(mib "$PH_HWM")

echo
echo "payhook comparative benchmark: wrk -t$THREADS -c$CONNECTIONS -d${DUR_S}s, POST of pre-signed WeChat Pay v3 notifications (new order each)"
echo "machine: $(nproc) CPUs ($(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)), $(awk '/^MemTotal/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo); load average ${LOAD_START} at start, ${LOAD_END} at end"
echo "payhook: $PAYHOOK_BIN, threads=$PAYHOOK_THREADS, NICE=$NICE, PAYHOOK_LOG=$PAYHOOK_LOG, Redis ledger (redis-server $(redis-server --version | sed 's/.*v=\([^ ]*\).*/\1/'), $REDIS_DESC, $REDIS_SOCKET); nginx $("$NGINX" -v 2>&1 | sed 's|.*/||'), $NGINX_WORKERS workers"
echo
printf '%-26s %9s %8s %8s %8s %8s %7s %11s %9s %7s %7s %7s\n' path req/s p50_ms p99_ms p999_ms non2xx errors cpu_us/req rss_mib bench% other% steal%
row() { # name label cpu_pid_hwm
    local cpu=- n=$1
    [[ -n ${R[${n}_cpu_ticks]:-} ]] && cpu=$(cpu_per "$n" "${R[${n}_requests]}")
    [[ $n == *payhook ]] && cpu=$(cpu_per "$n" "${R[${n}_forwarded]}")
    printf '%-26s %9s %8s %8s %8s %8s %7s %11s %9s %7s %7s %7s\n' "$2" "${R[${n}_rps]}" "$(ms "${R[${n}_p50_us]}")" \
        "$(ms "${R[${n}_p99_us]}")" "$(ms "${R[${n}_p999_us]}")" "${R[${n}_non2xx]}" "${R[${n}_errors]}" "$cpu" "$3" "${R[${n}_bench_pct]}" "${R[${n}_other_pct]}" "${R[${n}_steal_pct]}"
}
row direct "direct to backend (nginx)" "$(mib "$BACKEND_HWM")"
row nginx "nginx proxy_pass" "$(mib "$PROXY_HWM")"
row nginx_default "nginx proxy_pass, defaults" "$(mib "$DEFAULT_HWM")"
row payhook "payhook" "$PEAK_RSS"
row half_direct "half load: direct" "-"
row half_payhook "half load: payhook" "-"
echo
echo "nginx proxy_pass: upstream keep-alive, as payhook (the ratio's baseline); defaults: nginx's own proxy_pass, a new backend connection per request (context)"
echo "half load = fixed ${HALF_RATE}/s (payhook's max: ${R[payhook_rps]}/s), paced by wrk delay(); same -t$THREADS -c$CONNECTIONS"
echo "payhook forwarded ${R[payhook_forwarded]} (max run) and ${R[half_payhook_forwarded]} (half load) notifications, $(( R[payhook_not_forwarded] + R[half_payhook_not_forwarded] )) not forwarded"
echo "Redis (ledger) CPU, not counted above: $(redis_per payhook) us per notification (max run), peak RSS $(mib "$REDIS_HWM") MiB;" \
    "time inside its commands: $(redis_command_per payhook) us (INFO commandstats: wall clock, so it counts Redis being preempted mid-command)"
# Everything the bench ran (wrk, servers, Redis) per request: the ratio can be no better than the
# nginx path's figure over payhook's, since both share the same cores.
machine_us() { calc "\"%.1f\", ${R[${1}_bench_pct]} / 100 * $(nproc) * 1e6 / ${R[${1}_rps]}"; }
echo "whole-bench CPU per request (wrk + servers + Redis, from bench%): direct $(machine_us direct) us, nginx proxy_pass $(machine_us nginx) us (defaults: $(machine_us nginx_default) us), payhook $(machine_us payhook) us"
echo "cpu_us/req: CPU time (utime+stime from /proc/PID/stat) of that server's processes only; rss_mib: VmHWM (nginx: summed over master and workers)"
echo "bench%: share of the machine's CPU (all cores) used during the run by this bench (wrk, nginx, Redis, payhook); other%: by"
echo "processes outside it; steal%: taken by the hypervisor (other% and steal% should be ~0)"
echo
echo "ratio_payhook_vs_nginx=$RATIO"
echo "ratio_payhook_vs_nginx_default_proxy=$RATIO_DEFAULT"
echo "added_p50_ms=$ADDED_P50"
echo "added_p99_ms=$ADDED_P99"
echo "half_load_rate=$HALF_RATE"
echo "half_load_added_p50_ms=$HALF_ADDED_P50"
echo "half_load_added_p99_ms=$HALF_ADDED_P99"
echo "cpu_us_per_notification=$CPU_US"
echo "half_load_cpu_us_per_notification=$HALF_CPU_US"
echo "peak_rss_mib=$PEAK_RSS"
if [[ $SYSCALLS == 1 ]]; then
    counts=$(syscalls_per payhook)
    half_counts=$(syscalls_per half_payhook)
    echo "syscalls_per_notification=${counts%% *}"
    echo "half_load_syscalls_per_notification=${half_counts%% *}"
    echo "syscalls per notification, max run: ${counts#* }"
    echo "syscalls per notification, half load: ${half_counts#* }"
fi
echo
goal() { # label ok-expr
    if (( $(calc "\"%d\", $2") )); then echo "goal $1: met"; else echo "goal $1: NOT met"; fi
}
goal "throughput ratio >= 0.5 (payhook/nginx proxy_pass = $RATIO)" "$RATIO >= 0.5"
goal "added p99 <= 2 ms at half load ($HALF_ADDED_P99 ms)" "$HALF_ADDED_P99 <= 2"
goal "CPU <= 100 us per notification ($CPU_US us)" "$CPU_US <= 100"
goal "peak RSS <= 64 MiB ($PEAK_RSS MiB)" "$PEAK_RSS <= 64"

if (( ${#WARNINGS[@]} )); then
    echo
    echo "WARNING: the machine was not idle; throughput and latency are understated:"
    printf '  %s\n' "${WARNINGS[@]}"
fi
if (( ${#INVALID[@]} )); then
    echo
    echo "INVALID BENCH:"
    printf '  %s\n' "${INVALID[@]}"
    echo "payhook log: $TMP/payhook.log"
    exit 1
fi
