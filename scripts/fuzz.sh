#!/usr/bin/env bash
# Runs every cargo-fuzz target under fuzz/fuzz_targets for SECONDS each (default 60).
#
# Each target starts from its committed seeds (fuzz/seeds/<target>/) copied into the working
# corpus fuzz/corpus/<target>/ (git-ignored), so inputs the fuzzer finds accumulate across runs
# without touching the seeds. A crash leaves its input in fuzz/artifacts/<target>/ and fails the
# script.
#
# Usage: scripts/fuzz.sh [SECONDS]
set -euo pipefail

seconds="${1:-60}"
case "$seconds" in
'' | *[!0-9]*)
	echo "usage: $0 [SECONDS]" >&2
	exit 64
	;;
esac

root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root/fuzz"

if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
	echo "cargo-fuzz not found: installing it" >&2
	cargo install cargo-fuzz
fi

shopt -s nullglob
targets=(fuzz_targets/*.rs)
if [ "${#targets[@]}" -eq 0 ]; then
	echo "no fuzz target under fuzz/fuzz_targets" >&2
	exit 1
fi

for path in "${targets[@]}"; do
	target="$(basename "$path" .rs)"
	corpus="corpus/$target"
	mkdir -p "$corpus"
	if [ -d "seeds/$target" ]; then
		cp -n "seeds/$target"/* "$corpus"/ 2>/dev/null || true
	fi
	echo "== fuzzing $target for ${seconds}s (corpus $corpus)" >&2
	cargo +nightly fuzz run "$target" "$corpus" -- -max_total_time="$seconds"
done
