#!/usr/bin/env bash
# Fuzzes the payload decoders and the topic parser with cargo-fuzz (libFuzzer), each target for a
# fixed budget, starting from the seed corpus in fuzz/corpus/. Not part of CI. Any input that
# crashes a target is copied to model/tests/fuzz-regressions/<target>/, where the normal test suite
# replays it (model/tests/fuzz_regressions.rs) once the bug is fixed; commit it with the fix.
#
#   scripts/fuzz.sh [seconds per target, default 300]
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-300}"
if ! rustup toolchain list | grep -q '^nightly'; then
    rustup toolchain install nightly --profile minimal
fi
if ! command -v cargo-fuzz >/dev/null; then
    cargo install cargo-fuzz --locked
fi
status=0
for target in payload topic; do
    # The corpus grows as the fuzzer finds new paths; the seeds in git stay as they are.
    work="fuzz/corpus-work/$target"
    mkdir -p "$work"
    cp -n fuzz/corpus/"$target"/* "$work"/
    echo "fuzzing $target for ${seconds}s"
    if ! cargo +nightly fuzz run --fuzz-dir fuzz "$target" "$work" -- \
        -max_total_time="$seconds" -max_len=65536; then
        status=1
    fi
    for crash in fuzz/artifacts/"$target"/*; do
        [ -f "$crash" ] || continue
        mkdir -p model/tests/fuzz-regressions/"$target"
        cp "$crash" model/tests/fuzz-regressions/"$target"/
        echo "kept $(basename "$crash") in model/tests/fuzz-regressions/$target/"
    done
done
exit "$status"
