#!/usr/bin/env bash
# The whole test suite, on a fresh Debian 12 machine: installs what the tests need when it is
# missing, then runs formatting, lints and every test. CI runs exactly this (.ci/run).
#
#   scripts/test.sh            # everything
#   scripts/test.sh --quick    # skip fmt/clippy
set -euo pipefail
cd "$(dirname "$0")/.."

quick=0
[[ "${1:-}" == "--quick" ]] && quick=1

as_root() { if [[ $(id -u) -eq 0 ]]; then "$@"; else sudo "$@"; fi; }

# System packages the tests and benchmarks use: nftables (firewall tests), mosquitto (MQTT
# tests), iproute2 (network namespaces), python3-pip (pymodbus, the fragile PLC stack).
need=()
command -v nft >/dev/null 2>&1 || need+=(nftables)
command -v mosquitto >/dev/null 2>&1 || [[ -x /usr/sbin/mosquitto ]] || need+=(mosquitto)
command -v ip >/dev/null 2>&1 || need+=(iproute2)
command -v python3 >/dev/null 2>&1 || need+=(python3)
python3 -m pip --version >/dev/null 2>&1 || need+=(python3-pip)
if ((${#need[@]})); then
  echo "test.sh: installing ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  as_root apt-get update -qq
  as_root apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

# pymodbus 3.16.1: the server whose behaviour the fixtures captured (one ADU per segment).
if ! python3 -c 'import pymodbus, sys; sys.exit(pymodbus.__version__ != "3.16.1")' 2>/dev/null; then
  echo "test.sh: installing pymodbus 3.16.1"
  python3 -m pip install --quiet --disable-pip-version-check pymodbus==3.16.1 2>/dev/null \
    || python3 -m pip install --quiet --disable-pip-version-check --break-system-packages pymodbus==3.16.1
fi

if ((quick == 0)); then
  cargo fmt --all -- --check
  cargo clippy --all-targets --locked -- -D warnings
fi
log=$(mktemp)
trap 'rm -f "$log"' EXIT
# Doc tests are not part of --all-targets.
cargo test --doc --locked 2>&1 | tee "$log"
cargo test --all-targets --locked 2>&1 | tee -a "$log"
# One closing line for the whole suite (every "test result:" line added up).
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
