#!/usr/bin/env bash
# End-to-end load benchmark: what ztgate costs in front of a PLC, next to the floor (plaintext
# Modbus TCP straight to the PLC) and next to what a plant would put there today (HAProxy
# terminating mTLS in `mode tcp`). One command, on loopback only, about 3 minutes:
#
#   scripts/bench-load.sh
#
# The three targets sit in front of the same Modbus server, ztgate's simulated PLC (a
# tokio-modbus server) in its own process (`ztgate sim-plc`):
#   direct   plaintext Modbus TCP to the PLC;
#   haproxy  HAProxy (Debian package, installed here when missing), `mode tcp`,
#            `bind … ssl crt <cert+key> ca-file <ca> verify required`, plaintext to the PLC,
#            one tcplog line per connection to a file;
#   ztgate   `target/release/ztgate run` with full inspection: every request decoded and
#            decided by the policy (read_only for the benchmark's identity),
#            upstream_in_flight = 1, audit events to a file.
# Certificates: a throw-away ECDSA P-256 PKI made with ztgate's pki, in a temp dir.
#
# Measured per target, in rounds that alternate the targets (direct, haproxy, ztgate, direct,
# …; BENCH_ROUNDS, default 3), the table giving the median of the rounds:
#   - Modbus transactions/s and p50/p99 latency with 1 connection and with BENCH_CONNS (64)
#     connections; each connection sends FC3 "read 10 holding registers", waits for the
#     response (checked), repeats, for BENCH_SECS (5) seconds;
#   - full mTLS handshakes/s: BENCH_HANDSHAKERS (8) concurrent loops of new TCP connection +
#     full TLS handshake with a client certificate (resumption disabled) + one FC3 + close
#     (direct: TCP connect + one FC3);
#   - the proxy's CPU (utime+stime from /proc/PID/stat over each window): cores used and
#     transactions (handshakes) per proxy CPU-second; the load generator's and the PLC's CPU
#     too, to show which side was the bottleneck;
#   - the proxy's VmRSS idle, with 64 connections, and, on a fresh proxy process, with
#     BENCH_IDLE_SESSIONS (1,000) idle mTLS sessions open (each did one read), per session.
#
# CPU split (2 cores): the load generator (one tokio worker) and the PLC share CPU 0; the proxy
# under test runs alone on CPU 1 (taskset), so both proxies get the same budget of one core:
# HAProxy with `nbthread 1`, ztgate with the one tokio worker its runtime starts on one CPU.
# BENCH_PIN=0 runs unpinned (HAProxy nbthread = ztgate workers = number of CPUs).
#
# Output: the table on stdout, the same figures (and every round) as JSON in
# target/bench-load.json (BENCH_OUT). Exits non-zero when any target failed to serve (a
# transaction or a handshake errored, a process died). Logs and configs of the run are in a
# temp dir, removed at the end (BENCH_KEEP=1 keeps it).
#
# The load generator is benches/load.rs (harness = false; `cargo test --all-targets` runs it
# as a one-second smoke test).
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() { if [[ $(id -u) -eq 0 ]]; then "$@"; else sudo "$@"; fi; }

if ! command -v haproxy >/dev/null 2>&1 && [[ ! -x /usr/sbin/haproxy ]]; then
  echo "bench-load.sh: installing haproxy" >&2
  export DEBIAN_FRONTEND=noninteractive
  as_root apt-get update -qq
  as_root apt-get install -y -qq --no-install-recommends haproxy >/dev/null
fi
command -v taskset >/dev/null 2>&1 || { echo "bench-load.sh: taskset (util-linux) missing" >&2; exit 1; }

# 1,000 idle sessions need ~1,000 descriptors in the load generator and ~2,000 in the proxy.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

# shellcheck source=scripts/bench-common.sh
source scripts/bench-common.sh
run_benchmark bench-load.sh load 'ztgate|haproxy' bench-load.json
