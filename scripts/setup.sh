#!/usr/bin/env bash
# Installs what a fresh machine lacks for building payhook (`scripts/setup.sh build`), or for
# building and testing it (no argument: also Redis, PHP, a JDK, curl, openssl, nginx), and then makes
# sure a Redis listens on 127.0.0.1:6379. Safe to run again.
set -euo pipefail

need=()
command -v cmake >/dev/null || need+=(cmake)              # pingora's zlib-ng build
command -v cc >/dev/null || need+=(build-essential)
if [ "${1:-test}" = build ]; then
  if [ ${#need[@]} -gt 0 ]; then
    echo "setup: installing ${need[*]}"
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
  fi
  exit 0
fi
command -v redis-server >/dev/null || need+=(redis-server)
command -v php >/dev/null || need+=(php-cli)              # the PHP example backend's tests
command -v javac >/dev/null || need+=(openjdk-17-jdk-headless)
command -v curl >/dev/null || need+=(curl)
command -v openssl >/dev/null || need+=(openssl)           # the Redis TLS test's CA and certificates
command -v nginx >/dev/null || need+=(nginx-light)         # test-packaging's rehearsal of deploy/nginx/payhook.conf
if [ ${#need[@]} -gt 0 ]; then
  echo "setup: installing ${need[*]}"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi

if ! redis-cli -p 6379 ping >/dev/null 2>&1; then
  echo "setup: starting redis-server on 127.0.0.1:6379"
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no >/dev/null
  for _ in $(seq 50); do redis-cli -p 6379 ping >/dev/null 2>&1 && break; sleep 0.1; done
fi
