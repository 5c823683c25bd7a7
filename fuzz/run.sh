#!/usr/bin/env bash
# Builds every fuzz target once, then runs each for SECONDS (default 120)
# from a scratch corpus under fuzz/corpus/<target> seeded from
# fuzz/seeds/<target>. Prints executions per target; exits non-zero if any
# target crashed (its reproducer is under fuzz/artifacts/<target>/).
#
# CARGO may wrap cargo (e.g. `flock /tmp/cargo.lock cargo`) and RUN may wrap
# each target's run likewise; TOOLCHAIN may name one (`+nightly`); SANITIZER
# defaults to none (see README, Fuzzing). The targets run as built, not
# through `cargo fuzz run`, which would check the build again before each.
set -uo pipefail
cd "$(dirname "$0")/.."
secs=${1:-120}
cargo=${CARGO:-cargo}
toolchain=${TOOLCHAIN:-}
sanitizer=${SANITIZER:-none}
run=${RUN:-}
# shellcheck disable=SC2086
fuzz() { $cargo $toolchain fuzz "$@"; }

start=$(date +%s)
fuzz build --sanitizer "$sanitizer" || exit 1
# shellcheck disable=SC2086
bin=fuzz/target/$(rustc $toolchain -vV | sed -n 's/^host: //p')/release
built=$(date +%s)
mkdir -p fuzz/logs
failed=()
summary=()
for t in $(sed -n 's/^name = "\(.*\)"$/\1/p' fuzz/Cargo.toml | grep -v '^strongroom-fuzz$'); do
    mkdir -p "fuzz/corpus/$t" "fuzz/artifacts/$t"
    # shellcheck disable=SC2086
    $run "$bin/$t" "fuzz/corpus/$t" "fuzz/seeds/$t" \
        -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
        -artifact_prefix="fuzz/artifacts/$t/" >"fuzz/logs/$t.log" 2>&1
    rc=$?
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "fuzz/logs/$t.log" | tail -1)
    if [ "$rc" -ne 0 ]; then
        failed+=("$t")
        grep -E "panicked|ERROR: libFuzzer|SUMMARY|Test unit written|^Base64" "fuzz/logs/$t.log" | head -8
    fi
    summary+=("$(printf '%-14s %6ss %12s executions  %s' "$t" "$secs" "${execs:-?}" \
        "$([ "$rc" -eq 0 ] && echo ok || echo CRASH)")")
    echo "${summary[-1]}"
done
end=$(date +%s)
echo "fuzz: build $((built - start))s, runs $((end - built))s, total $((end - start))s"
if [ "${#failed[@]}" -ne 0 ]; then
    echo "fuzz: crashed: ${failed[*]} (reproducers in fuzz/artifacts/, logs in fuzz/logs/)" >&2
    exit 1
fi
