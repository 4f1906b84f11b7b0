# Shared by scripts/bench-load.sh and scripts/bench-mqtt.sh (sourced, not run): builds the
# release gateway and a `cargo bench` target, runs it in `--bench` mode, and on exit ends only
# what this run started, by PID (the load generator, then the children it recorded in
# $BENCH_PIDS_FILE, checked to still be ours by their command line).
#
# Usage: run_benchmark SCRIPT BENCH CHILD_REGEX OUT_JSON
#   SCRIPT       name for messages (bench-load.sh)
#   BENCH        the [[bench]] target (load)
#   CHILD_REGEX  what a recorded child's command line must match to be killed (ztgate|haproxy)
#   OUT_JSON     default for BENCH_OUT, under target/
run_benchmark() {
  local script=$1 bench=$2 children=$3 out=$4
  cargo build --release
  work=$(mktemp -d -t "ztgate-$bench.XXXXXX")
  cargo bench --bench "$bench" --no-run 2>&1 | tee "$work/build.log" >&2
  local exe
  exe=$(sed -n 's/^ *Executable .*(\(.*\))$/\1/p' "$work/build.log" | tail -n 1)
  [[ -x $exe ]] || { echo "$script: cannot find the $bench benchmark executable" >&2; exit 1; }

  runner=""
  bench_script=$script bench_children=$children
  trap _bench_cleanup EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM

  export BENCH_DIR="$work/run" BENCH_PIDS_FILE="$work/pids"
  export BENCH_ZTGATE="$PWD/target/release/ztgate"
  export BENCH_OUT="${BENCH_OUT:-$PWD/target/$out}"
  BENCH_CLK_TCK=$(getconf CLK_TCK)
  export BENCH_CLK_TCK

  "$exe" --bench &
  runner=$!
  local rc=0
  wait "$runner" || rc=$?
  runner=""
  exit "$rc"
}

_bench_cleanup() {
  if [[ -n $runner ]]; then kill "$runner" 2>/dev/null || true; fi
  if [[ -f $work/pids ]]; then
    while read -r pid; do
      if [[ $pid =~ ^[0-9]+$ ]] && { tr '\0' ' ' <"/proc/$pid/cmdline"; } 2>/dev/null | grep -qE "$bench_children"; then
        kill "$pid" 2>/dev/null || true
      fi
    done <"$work/pids"
  fi
  if [[ ${BENCH_KEEP:-0} == 1 ]]; then echo "$bench_script: run files kept in $work" >&2; else rm -rf "$work"; fi
}
