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
