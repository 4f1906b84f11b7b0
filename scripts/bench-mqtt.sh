#!/usr/bin/env bash
# End-to-end MQTT load benchmark: what ztgate costs in front of a broker, next to the floor
# (plaintext MQTT straight to the broker) and to the broker's own TLS. One command, on
# loopback only, about 5 minutes:
#
#   scripts/bench-mqtt.sh
#
# The targets sit in front of the same broker, Debian's Mosquitto 2.0.11 (installed here when
# missing), started by the benchmark on a free loopback port (bind port 0, release, Mosquitto
# binds it; another try with new ports if it was taken meanwhile; ready on its "Opening ipv4
# listen socket on port N" and "running" log lines) with a configuration it writes:
#   persistence false, allow_anonymous true, set_tcp_nodelay true (no Nagle delays in the
#   latency figures, on every socket of the broker, the same for every target);
#   max_queued_messages 1000000 (default 1000): Mosquitto 2.0 drops an outgoing QoS 0 PUBLISH
#   when the subscriber's output queue already holds max_queued_messages packets; raised, a
#   subscriber falling behind shows as latency, not loss, up to a million messages. (Seen on
#   the development VM: the backlog of a saturating QoS 0 publisher sits in the kernel socket
#   buffers in front of Mosquitto — its ingest is the bottleneck — and the default 1000 drops
#   nothing either; BENCH_MOSQUITTO_MAX_QUEUED=1000 runs with it);
#   max_inflight_messages 20 (the default, written out): it is also the receive maximum
#   Mosquitto announces in a v5 CONNACK and the outgoing QoS 1 window to 3.1.1 clients; it
#   does not gate QoS 0 (Mosquitto 2.0's db__ready_for_flight checks the queue count for QoS 0).
# Targets (BENCH_TARGETS, default "direct,ztgate,mosquitto-tls"):
#   direct         publisher → Mosquitto, plaintext;
#   ztgate         publisher → `target/release/ztgate run` (mTLS with a client certificate,
#                  full inspection: every PUBLISH decided by the policy — topic under
#                  bench/{identity}/#, QoS ≤ 1, no retain, payload ≤ 4 KiB —, client id bound
#                  to the certificate identity, audit events to a file) → Mosquitto, plaintext;
#   mosquitto-tls  publisher → Mosquitto's own mTLS listener (require_certificate true, the
#                  same certificates): "blind TLS", what TLS alone costs; TLS then runs in
#                  Mosquitto, on CPU 0.
# Certificates: a throw-away ECDSA P-256 PKI made with ztgate's pki, in a temp dir.
#
# Matrix (BENCH_VERSIONS "5" — "5,3.1.1" adds MQTT 3.1.1 —, BENCH_QOS "0,1", BENCH_PAYLOADS
# "64,1024" bytes). Per cell and target, in rounds (BENCH_ROUNDS, default 3) that alternate the
# targets cell by cell, the table giving the median of the rounds:
#   - saturated, BENCH_SECS (5) seconds: one publisher connection publishes to an allowed topic
#     as fast as flow control allows — QoS 0: PUBLISHes written in 16 KiB batches, TCP
#     back-pressure only (PUBLISHes/s then counts what the first hop accepted, kernel buffers
#     included; what Mosquitto could not deliver yet queues in it, hence the large p50/p99); QoS 1: at most BENCH_INFLIGHT (20, and never more than the receive
#     maximum of the CONNACK: Mosquitto's 20) PUBLISHes awaiting their PUBACK, every PUBACK
#     checked (0x10 "no matching subscribers" is an error). A subscriber connected DIRECTLY to
#     Mosquitto (plaintext), subscribed to the topic at the same QoS, counts deliveries and
#     measures publish → deliver latency from a timestamp in the payload (publisher and
#     subscriber are tasks of one process: one monotonic clock).
#     Reported: PUBLISHes/s, deliveries/s (within the window), delivered/published (all
#     deliveries, the drain after the window included: QoS 0 loss shows here), p50/p99
#     latency (saturated: mostly queueing), the CPU of ztgate (utime+stime from
#     /proc/PID/stat over the window) in cores and messages per ztgate CPU-second, Mosquitto's
#     and the load generator's CPU, the CPU every other process of the machine used meanwhile
#     ("other": the VM is shared; > 0.1 means the figures were disturbed), ztgate's RSS;
#   - low rate, BENCH_LATENCY_SECS (2) seconds at one PUBLISH every BENCH_LATENCY_INTERVAL_US
#     (1000) µs on fresh connections: p50/p99 publish → deliver latency without queueing.
#
# CPU split (2 cores): the load generator (publisher + subscriber, one tokio worker) and
# Mosquitto (single-threaded) share CPU 0; ztgate runs alone on CPU 1 (taskset; its runtime
# starts one worker on one CPU). BENCH_PIN=0 runs unpinned.
#
# Output: the table on stdout, the same figures (and every round) as JSON in
# target/bench-mqtt.json (BENCH_OUT). Exits non-zero when any target failed (a connection, a
# PUBACK or a QoS 1 delivery missing, a process died). Logs and configs of the run are in a
# temp dir, removed at the end (BENCH_KEEP=1 keeps it).
#
# The load generator is benches/mqtt_load.rs (harness = false; `cargo test --all-targets` runs
# it as a smoke test of about a second, which fails when mosquitto is missing).
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() { if [[ $(id -u) -eq 0 ]]; then "$@"; else sudo "$@"; fi; }

if ! command -v mosquitto >/dev/null 2>&1 && [[ ! -x /usr/sbin/mosquitto ]]; then
  echo "bench-mqtt.sh: installing mosquitto" >&2
  export DEBIAN_FRONTEND=noninteractive
  as_root apt-get update -qq
  as_root apt-get install -y -qq --no-install-recommends mosquitto >/dev/null
fi
command -v taskset >/dev/null 2>&1 || { echo "bench-mqtt.sh: taskset (util-linux) missing" >&2; exit 1; }

# shellcheck source=scripts/bench-common.sh
source scripts/bench-common.sh
run_benchmark bench-mqtt.sh mqtt_load 'ztgate|mosquitto' bench-mqtt.json
