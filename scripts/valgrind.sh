#!/usr/bin/env bash
# Runs examples/hygiene.rs under valgrind memcheck: fails on any invalid
# access or definitely-lost block (and if a context was not destroyed).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build -q --example hygiene
valgrind --quiet --error-exitcode=1 --leak-check=full --errors-for-leak-kinds=definite \
  --show-leak-kinds=definite target/debug/examples/hygiene
echo "valgrind: no invalid accesses, no definitely-lost blocks"
