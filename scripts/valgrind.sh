#!/usr/bin/env bash
# Runs examples/hygiene.rs under valgrind memcheck: fails on any invalid
# access or definitely-lost block (and if a context was not destroyed).
#
# Honours CARGO_TARGET_DIR (default `target`) as cargo does: a relative
# value is taken from the directory the script was started in, so the
# binary run here is the one cargo just built.
set -euo pipefail
target_dir=${CARGO_TARGET_DIR:-}
started_in=$PWD
cd "$(dirname "$0")/.."
if [[ -z $target_dir ]]; then
  target_dir=$PWD/target
elif [[ $target_dir != /* ]]; then
  target_dir=$started_in/$target_dir
fi
export CARGO_TARGET_DIR=$target_dir
cargo build -q --example hygiene
valgrind --quiet --error-exitcode=1 --leak-check=full --errors-for-leak-kinds=definite \
  --show-leak-kinds=definite "$CARGO_TARGET_DIR/debug/examples/hygiene"
echo "valgrind: no invalid accesses, no definitely-lost blocks"

# The two inputs that once reached undefined behaviour from safe code (a
# panic payload whose destructor panics: a double free; a spin window past
# the clock's range: a waiter unwinding while the owner wrote into its
# frame) run clean under memcheck too.
bin=$(cargo test -p pinned-ffi --test soundness --no-run 2>&1 | sed -n 's/.*Executable .*(\(.*soundness-[0-9a-f]*\)).*/\1/p' | tail -1)
[[ $bin = /* ]] || bin=$PWD/$bin
for t in a_panic_payload_whose_destructor_panics_is_dropped_once_on_every_road \
         spin_windows_and_timeouts_past_the_clocks_range_neither_panic_nor_unwind_a_waiter; do
  valgrind --quiet --error-exitcode=1 --fair-sched=yes "$bin" --exact "$t" --test-threads=1 -q
done
echo "valgrind: the regression tests for the double free and the spin overflow are clean"
