#!/usr/bin/env bash
# End-to-end check of systemd/digitd.service under a real systemd, booted in systemd-nspawn.
#
#   sudo bench/systemd_e2e.sh [--files N] [--throughput N] [--model PATH.keras] [--keep-running]
#   (--model: its .tflite and .card.json beside it are copied too)
#
# Root only. The first run builds the rootfs (debootstrap, pip: a few minutes); afterwards
# about 4 minutes, 2 without the throughput comparison (--throughput 0).
# What it does, following systemd/README.md step by step:
#   1. a minimal Debian rootfs in $DIGITD_E2E_ROOT (default /var/lib/machines/digitd-e2e),
#      made with debootstrap from the mirror this machine's apt uses (kept between runs);
#   2. /opt/digitd inside it: a venv with the package's dependencies as `pip install .` gives
#      them (no TensorFlow), pinned to this checkout's .venv versions, and the package built
#      from the working tree (model included);
#   3. boots it (systemd-nspawn -b), creates the users, folders, ACLs and config, installs
#      systemd/digitd.service byte for byte, and checks: verify, security, READY, STATUS=,
#      results for dropped PNGs, consumer access, the watchdog over more than WatchdogSec,
#      seccomp and MemoryDenyWriteExecute in force, SIGTERM drain with files in flight,
#      restart completing the rest, no duplicates, no TensorFlow library mapped in any
#      process of the service, a strict-seccomp (kill) run, and the throughput of a burst
#      under the unit as shipped, without MemoryDenyWriteExecute and with no sandbox at all;
#      --throughput 0 skips that.
# Prints one line per check ("PASS name: detail" / "FAIL name: detail"), exit 1 if any failed.
set -euo pipefail

FILES=300
TPUT=2000
MODEL=""
KEEP=0
while [[ $# -gt 0 ]]; do
    case "$1" in
        --files) FILES="$2"; shift 2 ;;
        --throughput) TPUT="$2"; shift 2 ;;
        --model) MODEL="$(readlink -f "$2")"; shift 2 ;;
        --keep-running) KEEP=1; shift ;;
        -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
        *) echo "unknown argument: $1" >&2; exit 2 ;;
    esac
done

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ROOT="${DIGITD_E2E_ROOT:-/var/lib/machines/digitd-e2e}"
MACHINE="digitd-e2e"
SUITE="${DIGITD_E2E_SUITE:-bookworm}"
HOSTPY="$REPO/.venv/bin/python"
LOG="${DIGITD_E2E_LOG:-/var/tmp/digitd-e2e.log}"   # everything verbose goes here
PIPCACHE=/var/cache/digitd-e2e-pip
UNIT_SRC="$REPO/systemd/digitd.service"
WORK=/var/tmp/e2e   # inside the rootfs (nspawn mounts a tmpfs on /tmp)
FAILED=0
NSPAWN_PID=""
LEADER=""

[[ $EUID -eq 0 ]] || { echo "run as root (systemd-nspawn needs it)" >&2; exit 2; }
: > "$LOG"

pass() { printf 'PASS %s: %s\n' "$1" "$2"; }
fail() { printf 'FAIL %s: %s\n' "$1" "$2"; FAILED=1; }
check() { # check NAME DETAIL CONDITION...
    local name="$1" detail="$2"; shift 2
    if "$@" >>"$LOG" 2>&1; then pass "$name" "$detail"; else fail "$name" "$detail"; fi
}
note() { printf '.... %s\n' "$*"; }
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.2f", b - a }'; }
# Run a command inside the booted container (all its namespaces), with a clean environment.
in_c() { nsenter -t "$LEADER" -a -- /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 "$@"; }
show() { in_c systemctl show -P "$1" digitd.service; }
# Run a command in the rootfs without booting it (shares the host network, for pip).
nspawn_run() {
    systemd-nspawn -q -D "$ROOT" --register=no --keep-unit --pipe \
        --bind="$PIPCACHE:/root/.cache/pip" \
        --bind-ro=/etc/ssl/certs/ca-certificates.crt:/etc/ssl/host-ca.crt \
        --setenv=PIP_CERT=/etc/ssl/host-ca.crt --setenv=PIP_DISABLE_PIP_VERSION_CHECK=1 \
        --setenv=PIP_DEFAULT_TIMEOUT=180 -- "$@" 2>&1 | grep -v 'Attempted to remove disk file system' || true
}
wait_for() { # wait_for SECONDS COMMAND...: poll every 0.2 s
    local end; end=$(awk -v t="$1" -v n="$(now)" 'BEGIN { printf "%.3f", n + t }'); shift
    until "$@" >/dev/null 2>&1; do
        awk -v e="$end" -v n="$(now)" 'BEGIN { exit !(n > e) }' && return 1
        sleep 0.2
    done
}
csv_rows() { in_c sh -c 'test -f /srv/digitd/outbox/results.csv && tail -n +2 /srv/digitd/outbox/results.csv | wc -l || echo 0'; }
rows_at_least() { [[ "$(csv_rows)" -ge "$1" ]]; }

shutdown_container() {
    if [[ -n "$NSPAWN_PID" ]] && kill -0 "$NSPAWN_PID" 2>/dev/null; then
        kill -TERM "$NSPAWN_PID" 2>/dev/null || true   # nspawn: clean shutdown of the container
        for _ in $(seq 100); do kill -0 "$NSPAWN_PID" 2>/dev/null || break; sleep 0.2; done
        kill -KILL "$NSPAWN_PID" 2>/dev/null || true
    fi
}
trap '[[ $KEEP -eq 1 ]] || shutdown_container' EXIT

# ---------------------------------------------------------------------------------------
# 1. tools and rootfs
# ---------------------------------------------------------------------------------------
if ! command -v systemd-nspawn >/dev/null || ! command -v debootstrap >/dev/null; then
    note "installing systemd-container and debootstrap"
    { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
        systemd-container debootstrap; } >>"$LOG" 2>&1
fi
MIRROR="$(awk '/^URIs:/ && $2 ~ /debian\/?$/ { print $2; exit }' /etc/apt/sources.list.d/*.sources 2>/dev/null || true)"
[[ -n "$MIRROR" ]] || MIRROR="$(awk '$1 == "deb" && $3 == "'"$SUITE"'" { print $2; exit }' /etc/apt/sources.list 2>/dev/null || true)"
MIRROR="${MIRROR:-http://deb.debian.org/debian}"
PKGS=systemd,systemd-sysv,dbus,python3,python3-venv,ca-certificates,procps,acl
if [[ ! -x "$ROOT/usr/lib/systemd/systemd" ]]; then
    t0=$(now)
    mkdir -p "$(dirname "$ROOT")"
    debootstrap --variant=minbase --include="$PKGS" "$SUITE" "$ROOT" "$MIRROR" >>"$LOG" 2>&1
    pass rootfs "debootstrap $SUITE from $MIRROR into $ROOT in $(since "$t0") s"
else
    pass rootfs "reusing $ROOT ($SUITE)"
fi
if [[ ! -x "$ROOT/usr/bin/setfacl" ]]; then   # rootfs from an older run of this script
    nspawn_run sh -c 'apt-get update -q && apt-get install -y -q acl' >>"$LOG" 2>&1
fi
mkdir -p "$ROOT$WORK" "$PIPCACHE"

# ---------------------------------------------------------------------------------------
# 2. /opt/digitd: dependencies pinned like ./.venv, the package from the working tree
# ---------------------------------------------------------------------------------------
# The dependencies are pyproject.toml's own list (no extras), so that this venv stays what
# `pip install .` gives when the list changes; the venv is rebuilt when it or a pin changes.
"$HOSTPY" -c 'import sys, tomllib; print("\n".join(tomllib.load(open(sys.argv[1], "rb"))["project"]["dependencies"]))' \
    "$REPO/pyproject.toml" > "$ROOT$WORK/requirements.txt"
"$HOSTPY" -m pip freeze 2>/dev/null | grep -v -i -E '^(-e |digitd)' > "$ROOT$WORK/constraints.txt"
cat "$ROOT$WORK/requirements.txt" "$ROOT$WORK/constraints.txt" > "$ROOT$WORK/venv-stamp"
if [[ ! -x "$ROOT/opt/digitd/bin/python" ]] || ! cmp -s "$ROOT$WORK/venv-stamp" "$ROOT/opt/digitd/.constraints"; then
    t0=$(now)
    nspawn_run sh -c "set -e; rm -rf /opt/digitd; python3 -m venv /opt/digitd
        /opt/digitd/bin/pip install -q --upgrade pip setuptools wheel
        /opt/digitd/bin/pip install -q -c $WORK/constraints.txt -r $WORK/requirements.txt
        cp $WORK/venv-stamp /opt/digitd/.constraints" >>"$LOG"
    pass venv "/opt/digitd dependencies installed with pip in $(since "$t0") s"
else
    pass venv "/opt/digitd dependencies already match ./.venv"
fi
# The package as `pip install /path/to/digitd` would install it: a snapshot of the tree.
rm -rf "$ROOT$WORK/src" && mkdir -p "$ROOT$WORK/src"
(cd "$REPO" && git ls-files -co --exclude-standard -- pyproject.toml README.md LICENSE daemon \
    | tar -cf - -T - ) | tar -xf - -C "$ROOT$WORK/src"
[[ -f "$ROOT$WORK/src/README.md" ]] || echo "digitd" > "$ROOT$WORK/src/README.md"
t0=$(now)
nspawn_run sh -c "/opt/digitd/bin/pip install -q --no-deps --no-build-isolation --force-reinstall $WORK/src && rm -rf $WORK/src" >>"$LOG"
if [[ -x "$ROOT/opt/digitd/bin/digitd" ]]; then
    pass package "pip install of the working tree into /opt/digitd in $(since "$t0") s"
else
    fail package "pip install failed (see $LOG)"; exit 1
fi
SHIPPED=$(ls "$ROOT"/opt/digitd/lib/python3*/site-packages/digitd/models/digitd-cnn.keras 2>/dev/null || true)
if [[ -z "$MODEL" && -z "$SHIPPED" ]]; then
    fail model "no shipped model (daemon/digitd/models/digitd-cnn.keras) and no --model given"; exit 1
fi


# PNGs: MNIST test digits from the repo's sample, dark ink on white as scanned, label in name.
make_pngs() { # make_pngs DIR PREFIX N OFFSET
    "$HOSTPY" - "$REPO/tests/data/mnist_sample.npz" "$@" >>"$LOG" 2>&1 <<'PY'
import pathlib, sys
import cv2, numpy as np
sample, out, prefix, n, offset = sys.argv[1], pathlib.Path(sys.argv[2]), sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
out.mkdir(parents=True, exist_ok=True)
for old in out.glob("*.png"):
    old.unlink()
d = np.load(sample)
x, y = d["x_test"], d["y_test"]
for i in range(offset, offset + n):
    k = i % len(x)
    cv2.imwrite(str(out / f"{prefix}{i:05d}_label{int(y[k])}.png"), 255 - x[k])
PY
}
make_pngs "$ROOT$WORK/burst1" "e2e_" "$FILES" 0
make_pngs "$ROOT$WORK/burst2" "e2e_" "$FILES" "$FILES"
make_pngs "$ROOT$WORK/burst3" "strict_" 64 0
if [[ $TPUT -gt 0 ]]; then
    make_pngs "$ROOT$WORK/tput-hardened" "tput_hardened_" "$TPUT" 0
    make_pngs "$ROOT$WORK/tput-relaxed" "tput_relaxed_" "$TPUT" 0
    make_pngs "$ROOT$WORK/tput-plain" "tput_plain_" "$TPUT" 0
fi
chmod -R a+rX "$ROOT$WORK"

# ---------------------------------------------------------------------------------------
# 3. boot
# ---------------------------------------------------------------------------------------
t0=$(now)
systemd-nspawn -q -D "$ROOT" -b -M "$MACHINE" --register=no --keep-unit --private-network \
    --console=passive >"${LOG%.log}-console.log" 2>&1 &
NSPAWN_PID=$!
leader() { # the container's PID 1 seen from here: nspawn's child once it runs systemd
    local pid
    for pid in $(pgrep -P "$NSPAWN_PID" || true); do
        [[ "$(cat "/proc/$pid/comm" 2>/dev/null)" == systemd ]] && { echo "$pid"; return 0; }
    done
    return 1
}
for _ in $(seq 300); do LEADER="$(leader || true)"; [[ -n "$LEADER" ]] && break; sleep 0.1; done
[[ -n "$LEADER" ]] || { fail boot "systemd-nspawn did not start (see ${LOG%.log}-console.log)"; exit 1; }
state=""
for _ in $(seq 180); do   # the bus is not there at once: "offline" until systemd is up
    state="$(timeout 60 nsenter -t "$LEADER" -a -- systemctl is-system-running --wait 2>/dev/null || true)"
    [[ "$state" == running || "$state" == degraded ]] && break
    sleep 0.5
done
if [[ "$state" == running || "$state" == degraded ]]; then
    pass boot "systemd $(in_c systemctl --version | awk 'NR==1 { print $2 }') in nspawn is $state after $(since "$t0") s"
else
    fail boot "system state '$state' (see $LOG)"; exit 1
fi
# systemd logs every notify message at debug level: proof of READY=1, WATCHDOG=1, STOPPING=1.
in_c systemd-analyze log-level debug

# ---------------------------------------------------------------------------------------
# 4. install as systemd/README.md says
# ---------------------------------------------------------------------------------------
MODEL_LINE=""
if [[ -n "$MODEL" ]]; then
    cp "$MODEL" "$ROOT/etc/digitd-e2e-model.keras"
    card="${MODEL%.keras}.card.json"; [[ -f "$card" ]] && cp "$card" "$ROOT/etc/digitd-e2e-model.card.json"
    tflite="${MODEL%.keras}.tflite"; [[ -f "$tflite" ]] && cp "$tflite" "$ROOT/etc/digitd-e2e-model.tflite"
    MODEL_LINE="model: /etc/digitd-e2e-model.keras"
fi
in_c sh -es >>"$LOG" 2>&1 <<EOF
systemctl disable --now digitd.service 2>/dev/null || true
rm -rf /run/systemd/system/digitd.service.d
id digitd >/dev/null 2>&1 || useradd --system --user-group --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin --comment "digitd inbox daemon" digitd
getent group digitd-read >/dev/null || groupadd --system digitd-read
id dropper >/dev/null 2>&1 || useradd --no-create-home --groups digitd dropper
id reader >/dev/null 2>&1 || useradd --no-create-home --groups digitd-read reader
id stranger >/dev/null 2>&1 || useradd --no-create-home stranger
rm -rf /srv/digitd
install -d -o root   -g root        -m 0755 /srv/digitd
install -d -o digitd -g digitd      -m 3770 /srv/digitd/inbox
install -d -o digitd -g digitd-read -m 2750 /srv/digitd/outbox
setfacl -d -m u::rwx,g::r-x,g:digitd-read:r-x,o::--- /srv/digitd/outbox
install -d -m 0755 /etc/digitd
printf 'inbox: /srv/digitd/inbox\noutbox: /srv/digitd/outbox\n%s\n' "$MODEL_LINE" > /etc/digitd/config.yaml
chown root:digitd /etc/digitd/config.yaml
chmod 0640 /etc/digitd/config.yaml
EOF
cfg="$(in_c /opt/digitd/bin/digitd check-config --config /etc/digitd/config.yaml 2>&1 || true)"
if grep -q 'inbox /srv/digitd/inbox, outbox /srv/digitd/outbox' <<<"$cfg"; then
    pass config "digitd check-config: $cfg"
else
    # Known bug (config._resolve_paths): absolute paths in a config file became None. Go on
    # with the same folders written relative to /etc/digitd, so the other checks still run.
    fail config "absolute inbox/outbox paths not taken: '$cfg'; continuing with paths relative to /etc/digitd"
    MODEL_LINE="${MODEL_LINE:+model: ../digitd-e2e-model.keras}"
    printf 'inbox: ../../srv/digitd/inbox\noutbox: ../../srv/digitd/outbox\n%s\n' "$MODEL_LINE" > "$ROOT/etc/digitd/config.yaml"
    in_c /opt/digitd/bin/digitd check-config --config /etc/digitd/config.yaml >>"$LOG" 2>&1
fi
install -m 0644 "$UNIT_SRC" "$ROOT/etc/systemd/system/digitd.service"
check unit-installed "systemd/digitd.service installed unchanged" cmp "$UNIT_SRC" "$ROOT/etc/systemd/system/digitd.service"
in_c systemctl daemon-reload

out="$(in_c systemd-analyze verify /etc/systemd/system/digitd.service 2>&1 || echo "exit $?")"
if [[ -z "$out" ]]; then pass verify "systemd-analyze verify (installed, real ExecStart): no output"; else fail verify "$out"; fi
exposure="$(in_c systemd-analyze security --no-pager digitd.service 2>>"$LOG" | sed -n 's/.*Overall exposure level for digitd.service: \([0-9.]*\).*/\1/p')"
if [[ -n "$exposure" ]] && awk -v e="$exposure" 'BEGIN { exit !(e <= 1.0) }'; then
    pass security "exposure $exposure (online, the loaded unit)"
else
    fail security "exposure '$exposure'"
fi

# ---------------------------------------------------------------------------------------
# 5. start: READY
# ---------------------------------------------------------------------------------------
t0=$(now)
if in_c systemctl enable --now digitd.service >>"$LOG" 2>&1; then
    start_s="$(since "$t0")"
    ready_s="$(awk -v a="$(show ExecMainStartTimestampMonotonic)" -v b="$(show ActiveEnterTimestampMonotonic)" 'BEGIN { printf "%.2f", (b - a) / 1e6 }')"
    pass ready "enable --now returned after $start_s s; ExecStart -> READY=1 (active) in $ready_s s"
else
    fail ready "start failed: Result=$(show Result) (journal in $LOG)"
    in_c journalctl -b -u digitd --no-pager -n 80 >>"$LOG" 2>&1; exit 1
fi
INV="$(show InvocationID)"
MAINPID="$(show MainPID)"
journal() { in_c journalctl -b --no-pager -o cat "_SYSTEMD_INVOCATION_ID=$INV"; }
notifications() { in_c journalctl -b --no-pager -o cat _PID=1 | grep -c "digitd.service: Got notification message from PID $1 ($2" || true; }
check active "ActiveState=$(show ActiveState) SubState=$(show SubState)" test "$(show SubState)" = running
status="$(in_c cat "/proc/$MAINPID/status")"
field() { awk -v k="$1:" '$1 == k { print $2 }' <<<"$status"; }
user="$(in_c id -un "$(field Uid)")"
check identity "MainPID $MAINPID runs as $user, NoNewPrivs=$(field NoNewPrivs), CapEff=$(field CapEff), CapBnd=$(field CapBnd)" \
    test "$user" = digitd -a "$(field CapEff)" = 0000000000000000 -a "$(field NoNewPrivs)" = 1
check seccomp "Seccomp=$(field Seccomp) filters=$(field Seccomp_filters), MemoryDenyWriteExecute=$(show MemoryDenyWriteExecute)" \
    test "$(field Seccomp)" = 2 -a "$(show MemoryDenyWriteExecute)" = yes
netdevs="$(in_c nsenter -t "$MAINPID" -n ls /sys/class/net 2>/dev/null | tr '\n' ' ' || true)"
check netns "network devices in the service's namespace: ${netdevs:-?}" test "$netdevs" = "lo "
check ready-msg "READY=1 datagram received from the main process" test "$(notifications "$MAINPID" "READY=1")" -ge 1
daemon_ready="$(journal | sed -n 's/.*"seconds": \([0-9.]*\).*"event": "ready".*/\1/p; s/.*"event": "ready".*"seconds": \([0-9.]*\).*/\1/p' | head -1)"
note "the daemon's own 'ready' event says ${daemon_ready:-?} s from start to model loaded and warmed"

# ---------------------------------------------------------------------------------------
# 6. a burst of PNGs, dropped as README says (temporary name in the inbox, then rename)
# ---------------------------------------------------------------------------------------
drop() { # drop BURSTDIR: as user "dropper" with umask 027, hidden name then rename
    in_c runuser -u dropper -- sh -c "umask 027; cd /srv/digitd/inbox && for f in $WORK/$1/*.png; do n=\${f##*/}; cp \"\$f\" \".\$n\" && mv \".\$n\" \"\$n\"; done"
}
summary() { # summary EXPECTED_ROWS: one line about the outbox; fails on loss or duplicates
    in_c /opt/digitd/bin/python - "$1" <<'PY'
import collections, csv, os, sys
want = int(sys.argv[1])
out = "/srv/digitd/outbox"
rows = list(csv.DictReader(open(f"{out}/results.csv", newline="", encoding="utf-8")))
st = collections.Counter(r["status"] for r in rows)
labelled = [r for r in rows if r["digit"]]
right = sum(r["digit"] == r["file"].rsplit("label", 1)[1][0] for r in labelled)
files, ids = [r["file"] for r in rows], [r["id"] for r in rows]
inbox = [n for n in os.listdir("/srv/digitd/inbox") if n != ".digitd"]
failed = [n for n in os.listdir(f"{out}/failed") if not n.endswith(".error.json")]
print(f"rows={len(rows)} unique files={len(set(files))} ids={len(set(ids))}; ok={st['ok']} "
      f"low_confidence={st['low_confidence']} rejected={st['rejected']}; "
      f"accuracy {right / max(1, len(labelled)):.3f}; processed/={len(os.listdir(out + '/processed'))} "
      f"failed/={len(failed)} previews/={len(os.listdir(out + '/previews'))} inbox left={len(inbox)}")
good = len(rows) == want == len(set(files)) == len(set(ids)) and not inbox and not st["rejected"]
sys.exit(0 if good else 1)
PY
}
t0=$(now)
drop burst1
drop_s="$(since "$t0")"
if wait_for 120 rows_at_least "$FILES"; then
    pass results "$FILES PNGs dropped in $drop_s s; all $FILES rows in results.csv $(since "$t0") s after the first drop"
else
    fail results "only $(csv_rows) of $FILES rows after 120 s"
fi
if s="$(summary "$FILES" 2>&1)"; then pass outbox "$s"; else fail outbox "$s"; fi
check consumer "reader (group digitd-read) reads results.csv and a preview through the default ACL" \
    in_c runuser -u reader -- sh -c 'head -1 /srv/digitd/outbox/results.csv && cat "/srv/digitd/outbox/previews/$(ls /srv/digitd/outbox/previews | head -1)" >/dev/null'
check private "stranger and dropper cannot read the outbox; dropper cannot enter inbox/.digitd" \
    in_c sh -c '! runuser -u stranger -- cat /srv/digitd/outbox/results.csv && ! runuser -u dropper -- cat /srv/digitd/outbox/results.csv && ! runuser -u dropper -- ls /srv/digitd/inbox/.digitd'
status_ok() { in_c systemctl show -P StatusText digitd.service | grep -q "^$FILES processed"; }
wait_for 3 status_ok || true
check status "StatusText=\"$(show StatusText)\"" status_ok
mem="$(in_c awk '$1 == "VmHWM:" || $1 == "VmRSS:" { printf "%s %d MB ", $1, $2 / 1024 }' "/proc/$MAINPID/status")"
note "memory of the main process: ${mem}(MemoryMax=$(show MemoryMax)); threads: $(in_c ls "/proc/$MAINPID/task" | wc -l)"
# The service's processes: the supervisor (MainPID) and its worker processes.
SVC_PIDS="$MAINPID $(in_c sh -c "cat /proc/$MAINPID/task/*/children" 2>/dev/null | tr '\n' ' ')"
tree_kb="$(in_c sh -c "for p in $SVC_PIDS; do awk '\$1 == \"VmRSS:\" { print \$2 }' /proc/\$p/status; done" | awk '{ s += $1 } END { print s + 0 }')"
note "resident memory of the service's $(wc -w <<<"$SVC_PIDS") processes together, idle after the burst: $((tree_kb / 1024)) MB"
tf_maps="$(in_c sh -c "for p in $SVC_PIDS; do grep -l -i tensorflow /proc/\$p/maps; done" 2>/dev/null || true)"
litert_maps="$(in_c sh -c "for p in $SVC_PIDS; do grep -l libLiteRt /proc/\$p/maps; done" 2>/dev/null | wc -l)"
check no-tensorflow "no TensorFlow library mapped in any process of the service (LiteRT in $litert_maps of them); TensorFlow not installed in /opt/digitd" \
    sh -c "test -z '$tf_maps' && test '$litert_maps' -ge 1 && ! ls -d $ROOT/opt/digitd/lib/python3*/site-packages/tensorflow"

# ---------------------------------------------------------------------------------------
# 7. the watchdog: idle for longer than WatchdogSec, pings keep arriving, no restart
# ---------------------------------------------------------------------------------------
wd_sec="$(grep -E '^WatchdogSec=' "$UNIT_SRC" | tail -1 | cut -d= -f2 | tr -d 's')"
ping1="$(show WatchdogTimestampMonotonic)"
sleep $((wd_sec + 5))
ping2="$(show WatchdogTimestampMonotonic)"
if [[ "$(show MainPID)" == "$MAINPID" && "$(show NRestarts)" == 0 && "$(show SubState)" == running && "$ping2" != "$ping1" ]] \
    && ! journal | grep -qi 'watchdog timeout'; then
    pass watchdog "WatchdogSec=${wd_sec}s, idle $((wd_sec + 5)) s: $(notifications "$MAINPID" "WATCHDOG=1") WATCHDOG=1 received, same MainPID, NRestarts=0"
else
    fail watchdog "MainPID $(show MainPID) (was $MAINPID), NRestarts=$(show NRestarts), last ping $ping1 -> $ping2"
fi

# ---------------------------------------------------------------------------------------
# 8. SIGTERM with files in flight: the batch in hand is finished, exit 0; restart does the rest
# ---------------------------------------------------------------------------------------
drop burst2 &
DROPPER=$!
wait_for 60 rows_at_least $((FILES + 1)) || true
t0=$(now)
in_c systemctl stop digitd.service
stop_s="$(since "$t0")"
wait "$DROPPER" || true
rows_after_stop="$(csv_rows)"
result="$(show Result)"; code="$(show ExecMainCode)"; st="$(show ExecMainStatus)"
stopping="$(notifications "$MAINPID" "STOPPING=1")"
# journald indexes stdout lines a moment after they are written: a 0.4 s stop can beat it.
for _ in $(seq 50); do journal | grep -q 'SIGTERM' && break; sleep 0.1; done
if [[ "$result" == success && "$code" == 1 && "$st" == 0 && "$stopping" -ge 1 ]] && journal | grep -q 'SIGTERM'; then
    pass stop "systemctl stop took $stop_s s: SIGTERM logged, STOPPING=1 received, exited with status 0, Result=success ($((rows_after_stop - FILES)) of the second burst done before it stopped)"
else
    fail stop "took $stop_s s: Result=$result ExecMainCode=$code ExecMainStatus=$st, STOPPING=1 seen $stopping times"
fi
t0=$(now)
in_c systemctl start digitd.service
start_s="$(since "$t0")"
INV="$(show InvocationID)"
if wait_for 120 rows_at_least $((2 * FILES)); then
    if s="$(summary $((2 * FILES)) 2>&1)"; then
        pass restart "READY again in $start_s s; the rest of the burst picked up: $s"
    else
        fail restart "$s"
    fi
else
    fail restart "only $(csv_rows) of $((2 * FILES)) rows after the restart"
fi
errors="$(journal | grep -c -E '"level": "(error|critical)"|Traceback' || true)"
batches="$(journal | grep -c '"event": "batch"' || true)"
check journal "JSON lines in the journal after the restart: $batches batch events, $errors errors" test "$errors" = 0

dumps="$(in_c journalctl -b --no-pager -o cat | grep -c -E 'digitd.service: Main process exited, code=(killed|dumped)|Watchdog timeout' || true)"
check crashes "no digitd process killed, dumped or timed out by the watchdog so far in this boot" test "$dumps" = 0

# ---------------------------------------------------------------------------------------
# 9. strict seccomp: with SystemCallErrorNumber=kill a call outside the allow-list kills the
#    daemon with SIGSYS (the shipped unit answers EPERM instead). Find which calls it makes:
#    the kernel's audit line names each; allow it in a runtime drop-in and go again.
# ---------------------------------------------------------------------------------------
syscall_name() {
    awk -v n="$1" '$1 == "#define" && $3 == n { sub("__NR_", "", $2); print $2; found = 1 } END { if (!found) print "syscall_" n }' \
        /usr/include/x86_64-linux-gnu/asm/unistd_64.h 2>/dev/null || echo "syscall_$1"
}
in_c systemctl stop digitd.service
base="$(csv_rows)"
denied=()
dropped=0
strict_ok=0
STRICT_INVS=""   # the strict runs' invocations: the errors they log are the test's own doing
for _ in 1 2 3 4 5 6; do   # at most six rounds of "find a call, allow it"
    {
        printf '[Service]\nSystemCallErrorNumber=kill\n'
        [[ ${#denied[@]} -gt 0 ]] && printf 'SystemCallFilter=%s\n' "${denied[*]}"
    } > "$ROOT/run-strict.conf.tmp"
    in_c sh -c "mkdir -p /run/systemd/system/digitd.service.d && cat > /run/systemd/system/digitd.service.d/strict.conf && systemctl daemon-reload" \
        < "$ROOT/run-strict.conf.tmp"
    rm -f "$ROOT/run-strict.conf.tmp"
    mark="$(dmesg | wc -l)"
    if in_c systemctl start digitd.service 2>>"$LOG"; then
        INV="$(show InvocationID)"
        STRICT_INVS="$STRICT_INVS $INV"
        [[ $dropped -eq 1 ]] || { drop burst3; dropped=1; }
        wait_for 60 rows_at_least $((base + 64)) || true
        in_c systemctl stop digitd.service
    fi
    if [[ "$(show Result)" == success && "$(show ExecMainStatus)" == 0 && "$(csv_rows)" -ge $((base + 64)) ]]; then
        strict_ok=1; break
    fi
    # The supervisor is "digitd"; its workers (python3 -m digitd run --worker) are "python3".
    new="$(dmesg | tail -n +$((mark + 1)) | grep -E 'comm="(digitd|python3[.0-9]*)"' | grep 'sig=31' | sed -n 's/.* syscall=\([0-9]*\) .*/\1/p' | sort -u || true)"
    STRICT_INVS="$STRICT_INVS $(show InvocationID)"   # a start that failed (a worker killed)
    [[ -n "$new" ]] || break   # died of something else: give up
    for n in $new; do denied+=("$(syscall_name "$n")"); done
done
in_c sh -c 'rm -rf /run/systemd/system/digitd.service.d && systemctl daemon-reload'
if [[ $strict_ok -eq 1 ]]; then
    pass strict-seccomp "with kill instead of EPERM the daemon completes 64 more files after allowing: ${denied[*]:-nothing} (outside the allow-list; the shipped unit answers EPERM)"
else
    fail strict-seccomp "no clean run after allowing ${denied[*]:-nothing}: Result=$(show Result) ExecMainStatus=$(show ExecMainStatus) rows=$(csv_rows)"
fi
if s="$(summary $((base + 64)) 2>&1)"; then pass final-outbox "$s"; else fail final-outbox "$s"; fi

# Inputs are filed by rename, not copied: the file in outbox/processed/ is the dropped inode.
# (Two ReadWritePaths= bind mounts for inbox and outbox would force copy + fsync + delete.)
in_c systemctl start digitd.service
INV="$(show InvocationID)"
probe="probe_$(date +%s)_label7.png"
ino_in="$(in_c runuser -u dropper -- sh -c "umask 027; cd /srv/digitd/inbox && cp $WORK/burst3/\$(ls $WORK/burst3 | head -1) .$probe && stat -c %i .$probe && mv .$probe $probe")"
wait_for 30 in_c test -e "/srv/digitd/outbox/processed/$probe" || true
ino_out="$(in_c stat -c %i "/srv/digitd/outbox/processed/$probe" 2>/dev/null || echo missing)"
in_c systemctl stop digitd.service
check rename "processed/$probe is inode $ino_out, dropped as inode $ino_in: moved by rename(2), not copied" test "$ino_in" = "$ino_out"

# Numbers under the unit as shipped (config.yaml: recognise: auto): the number model is
# served by LiteRT as the digit model is, under the same sandbox.
"$HOSTPY" - "$REPO" "$ROOT$WORK/numbers" >>"$LOG" 2>&1 <<'PY'
import pathlib, sys
import numpy as np
repo, out = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
sys.path.insert(0, str(repo / "bench"))
import number_scans
out.mkdir(parents=True, exist_ok=True)
d = np.load(repo / "tests/data/mnist_sample.npz")
for i in range(8):
    data, truth, _ = number_scans.render_number(d["x_test"], d["y_test"], i, seed=11,
                                                flavour="paper_grey", decorations=())
    (out / f"number{i}_digits{truth}.png").write_bytes(data)
PY
chmod -R a+rX "$ROOT$WORK/numbers"
base="$(csv_rows)"
in_c systemctl start digitd.service
drop numbers
wait_for 60 rows_at_least $((base + 8)) || true
in_c systemctl stop digitd.service
numbers="$(in_c /opt/digitd/bin/python - <<'PY'
import csv
rows = [r for r in csv.DictReader(open("/srv/digitd/outbox/results.csv", newline="", encoding="utf-8"))
        if r["file"].startswith("number")]
right = sum(r["digits"] == r["file"].rsplit("digits", 1)[1].split(".")[0] for r in rows)
several = sum(int(r["digit_count"] or 0) >= 2 for r in rows)
print(f"{len(rows)} {several} {right}")
PY
)"
read -r n_rows n_several n_right <<<"${numbers:-0 0 0}"
check numbers "8 PNGs of 2-8 digits: $n_rows rows, $n_several read as numbers, $n_right strings exactly right (recognise: auto, the default)" \
    test "$n_rows" = 8 -a "$n_several" = 8 -a "$n_right" -ge 6

# ---------------------------------------------------------------------------------------
# 10. throughput of a burst under three set-ups: the unit as shipped; a drop-in with
#     MemoryDenyWriteExecute=no; a transient unit with no sandbox at all (same user), which
#     gives the cost of the sandbox. Staged by the dropper on the same file system, renamed into the
#     inbox at once; files/s from the first rename to the newest processed_at in results.csv.
#     Two cores shared with whatever else runs: compare the variants of one run, not runs.
# ---------------------------------------------------------------------------------------
burst_rate() { # burst_rate DIR: prints "files/s seconds"
    in_c runuser -u dropper -- sh -c "umask 027; rm -rf /srv/digitd/inbox/.stage-$1; cp -r $WORK/$1 /srv/digitd/inbox/.stage-$1"
    in_c runuser -u dropper -- /opt/digitd/bin/python - "$1" "$2" <<'PY'
import csv, os, sys, time
from datetime import datetime
name, base = sys.argv[1], int(sys.argv[2])
stage, inbox = f"/srv/digitd/inbox/.stage-{name}", "/srv/digitd/inbox"
files = sorted(os.listdir(stage))
t0 = time.time()
for f in files:
    os.rename(f"{stage}/{f}", f"{inbox}/{f}")
os.rmdir(stage)
deadline = time.time() + 300
while time.time() < deadline:
    time.sleep(0.2)
    try:
        with open("/srv/digitd/outbox/results.csv", newline="", encoding="utf-8") as fh:
            rows = [r for r in csv.DictReader(fh) if r["file"].startswith(f"tput_{name.split('-')[1]}_")]
    except PermissionError:
        sys.exit("dropper cannot read results.csv")
    if len(rows) >= len(files):
        last = max(datetime.fromisoformat(r["processed_at"].replace("Z", "+00:00")).timestamp() for r in rows)
        print(f"{len(files) / (last - t0):.0f} {last - t0:.2f}")
        sys.exit(0)
sys.exit(f"only {len(rows)} of {len(files)} rows after 300 s")
PY
}
MEDIANS='
import json, statistics, sys
b = [json.loads(l) for l in sys.stdin if l.startswith("{") and "\"event\": \"batch\"" in l]
n = max((x["files"] for x in b), default=0)
b = [x for x in b if x["files"] == n]
m = {k: statistics.median(x[k] for x in b) if b else float("nan") for k in ("infer_ms", "decode_ms", "write_ms", "wait_ms")}
print("%d full batches of %d, median ms: infer %.1f, decode %.1f, write %.1f, wait %.1f"
      % (len(b), n, m["infer_ms"], m["decode_ms"], m["write_ms"], m["wait_ms"]))
'
if [[ $TPUT -gt 0 ]]; then
    # The dropper may not read the outbox (by design); for this measurement only, let it.
    in_c setfacl -m u:dropper:rx /srv/digitd/outbox
    in_c setfacl -m u:dropper:r /srv/digitd/outbox/results.csv
    for variant in hardened relaxed plain; do
        unit=digitd.service
        case $variant in
            hardened) what="the unit as shipped" ;;
            relaxed) what="drop-in MemoryDenyWriteExecute=no"
                in_c sh -c 'mkdir -p /run/systemd/system/digitd.service.d && printf "[Service]\nMemoryDenyWriteExecute=no\n" > /run/systemd/system/digitd.service.d/relaxed.conf && systemctl daemon-reload' ;;
            plain) what="no sandbox at all (transient unit, same user)"; unit=digitd-plain.service ;;
        esac
        if [[ $variant == plain ]]; then
            in_c systemd-run -q --unit=digitd-plain -p Type=notify -p NotifyAccess=main -p User=digitd -p Group=digitd \
                -p UMask=0077 /opt/digitd/bin/digitd run --config /etc/digitd/config.yaml
        else
            in_c systemctl start digitd.service
        fi
        INV="$(in_c systemctl show -P InvocationID "$unit")"
        r="$(burst_rate "tput-$variant" 0 2>&1)" && ok=1 || ok=0
        in_c systemctl stop "$unit"
        medians="$(journal | "$HOSTPY" -c "$MEDIANS" 2>&1)"
        if [[ $ok -eq 1 ]]; then
            pass "throughput-$variant" "$what: $TPUT PNGs renamed in at once, last row after $(cut -d' ' -f2 <<<"$r") s = ${r%% *} files/s; $medians"
        else
            fail "throughput-$variant" "$what: $r"
        fi
    done
    in_c sh -c 'rm -rf /run/systemd/system/digitd.service.d && systemctl daemon-reload'
    in_c setfacl -x u:dropper /srv/digitd/outbox
fi

# Not counted: the strict-seccomp runs, whose killed worker makes the supervisor log
# worker_died and giving_up by design.
errs="$(in_c journalctl -b -u digitd.service --no-pager -o json | "$HOSTPY" -c '
import collections, json, sys
skip = set(sys.argv[1].split())
seen = collections.Counter()
for line in sys.stdin:
    try:
        record = json.loads(line)
        if record.get("_SYSTEMD_INVOCATION_ID") in skip:
            continue
        e = json.loads(record.get("MESSAGE") or "")
    except (ValueError, TypeError):
        continue
    if isinstance(e, dict) and e.get("level") in ("error", "critical"):
        seen[str(e.get("event"))[:90]] += 1
print("; ".join(f"{n}x {ev!r}" for ev, n in seen.items()))' "$STRICT_INVS" 2>&1 || true)"
check log-errors "error-level events from digitd in this boot, the strict-seccomp runs aside: ${errs:-none}" test -z "$errs"

if [[ $KEEP -eq 1 ]]; then
    in_c systemctl start digitd.service
    note "container left running: nsenter -t $LEADER -a systemctl status digitd; stop it with: kill $NSPAWN_PID"
fi
note "details in $LOG"
exit "$FAILED"
