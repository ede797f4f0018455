#!/usr/bin/env bash
# Checks conf/prometheus/alerts.yml with `promtool check rules` and conf/grafana/payhook.json with
# python3's json.tool. If promtool is missing it installs Debian's `prometheus` package (which ships
# /usr/bin/promtool) without letting it start or enable the Prometheus server, whose default port
# 9090 is payhook's admin port. If promtool still cannot be had, it prints one SKIPPED line and
# exits 0 (the JSON check has passed by then).
set -euo pipefail
cd "$(dirname "$0")/.."

RULES=conf/prometheus/alerts.yml
DASHBOARD=conf/grafana/payhook.json

if ! python3 -m json.tool "$DASHBOARD" >/dev/null; then
  echo "check-alerts: $DASHBOARD is not valid JSON" >&2
  exit 1
fi

install_promtool() {
  command -v apt-get >/dev/null 2>&1 || return 1
  local sudo=()
  if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null || return 1
    sudo=(sudo -n)
  fi
  local log policy=/usr/sbin/policy-rc.d made_policy=0 was_installed=0 rc=0
  log=$(mktemp)
  dpkg -s prometheus >/dev/null 2>&1 && was_installed=1
  # 101 = "action forbidden": invoke-rc.d and deb-systemd-invoke do not start the server.
  if [ ! -e "$policy" ]; then
    "${sudo[@]}" sh -c "printf '#!/bin/sh\nexit 101\n' > $policy && chmod 755 $policy" && made_policy=1
  fi
  local install=("${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus)
  if ! "${install[@]}" >"$log" 2>&1; then
    # a fresh image may have no package lists yet
    { "${sudo[@]}" apt-get update -qq && "${install[@]}"; } >>"$log" 2>&1 || rc=1
  fi
  [ "$made_policy" = 1 ] && "${sudo[@]}" rm -f "$policy"
  if [ "$rc" = 0 ] && [ "$was_installed" = 0 ]; then
    # only promtool was wanted: keep the server from starting at the next boot
    if [ -d /run/systemd/system ]; then
      "${sudo[@]}" systemctl disable --now --quiet prometheus >>"$log" 2>&1 || true
    elif command -v update-rc.d >/dev/null 2>&1; then
      "${sudo[@]}" update-rc.d prometheus disable >>"$log" 2>&1 || true
    fi
  fi
  rm -f "$log"
  return "$rc"
}

if ! command -v promtool >/dev/null 2>&1; then
  if ! install_promtool || ! command -v promtool >/dev/null 2>&1; then
    echo "check-alerts: SKIPPED (promtool not installable)"
    exit 0
  fi
fi

promtool check rules "$RULES"
echo "check-alerts: OK ($RULES, $DASHBOARD)"
