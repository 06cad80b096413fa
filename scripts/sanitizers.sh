#!/usr/bin/env bash
# Runs the tests under the nightly toolchain's dynamic checkers:
#
#   1. AddressSanitizer (with LeakSanitizer) over the whole workspace,
#      the bundled C library included;
#   2. Miri over pinned-ffi's pure-Rust unit tests, where the miri
#      component is installed;
#   3. ThreadSanitizer over the workspace's tests, where the rust-src
#      component is installed (it rebuilds std with -Zbuild-std).
#
# Whatever is not installed is skipped with a visible `SKIPPED:` line;
# this script never installs a toolchain or a component. Each run uses
# its own target directory under target/ so it does not clobber the
# normal build. Every command is echoed before it runs.
set -euo pipefail
cd "$(dirname "$0")/.."

# Never let rustup fetch a missing toolchain behind our back.
export RUSTUP_AUTO_INSTALL=0

TARGET=x86_64-unknown-linux-gnu
# cc reads CFLAGS_<target> in preference to CFLAGS: keep the caller's.
CFLAGS_VAR=CFLAGS_${TARGET//-/_}

# Echoes a command (with the environment it is given), quoting what needs
# it so the line can be pasted back into a shell, and runs it.
run() {
  local arg line=+
  for arg in "$@"; do
    if [[ $arg =~ ^[A-Za-z0-9_=+:,./-]+$ ]]; then line+=" $arg"; else line+=" ${arg@Q}"; fi
  done
  printf '%s\n' "$line"
  env "$@"
}
skip() { printf 'SKIPPED: %s\n' "$*"; }
# Runs a step and says how long it took, passed or failed.
timed() {
  local what=$1 start=$SECONDS rc=0
  shift
  "$@" || rc=$?
  if ((rc == 0)); then
    printf '%s: passed in %ds\n' "$what" $((SECONDS - start))
  else
    printf '%s: FAILED (exit %d) after %ds\n' "$what" "$rc" $((SECONDS - start)) >&2
  fi
  return "$rc"
}

if ! command -v rustup >/dev/null 2>&1 || ! rustup toolchain list | grep -Eq '^nightly(-| |$)'; then
  skip "AddressSanitizer (no nightly toolchain)"
  skip "Miri (no nightly toolchain)"
  skip "ThreadSanitizer (no nightly toolchain)"
  exit 0
fi
run rustc +nightly --version
installed=$(rustup component list --toolchain nightly --installed)
has_rust_src() { grep -q '^rust-src' <<<"$installed"; }

# --- AddressSanitizer ------------------------------------------------------
#
# --target is given so that build scripts and proc macros (host code) are
# built without the sanitizer; only the tests and what they link are.
#
# The C library (ffi-sys/build.rs compiles csrc/ with the cc crate) is
# instrumented too: cc honours CFLAGS_x86_64_unknown_linux_gnu, and the
# objects GCC instruments link against the ASan runtime rustc links into
# every test binary, so out-of-bounds accesses inside csrc/ are caught
# as well as those in Rust.
#
# Doctests run too (RUSTDOCFLAGS): they pass under ASan, and they are
# where most of the public API's examples live.
#
# ASAN_OPTIONS: detect_stack_use_after_return=1 also catches a pointer to
# a returned frame being used (the C library writes through out-pointers
# that Rust hands it); it cost nothing measurable here (a warm run took
# 46 s with it, 55 s without: noise). LeakSanitizer stays on (a context
# that is never destroyed is a real bug in this project), with
# scripts/lsan.supp naming only what is not ours to fix: the corruption
# test that forgets its contexts on purpose, and a system library's
# one-time block that its unloading leaves unreferenced.
# (`|| return` below: `timed` runs this function where `set -e` is off.)
#
# The real SDKs (pinned-ffi-sdks) run in a second pass with the slow,
# DWARF-based unwinder for allocation stacks (fast_unwind_on_malloc=0):
# the system libraries there are built without frame pointers, so the
# fast unwinder stops at their first frame and a suppression could only
# ever see `realloc`. With whole stacks, lsan.supp can name a system
# library's one-time initialisation (see the file) without hiding a leak
# of ours.
asan() {
  local env=(RUSTFLAGS="-Zsanitizer=address" RUSTDOCFLAGS="-Zsanitizer=address"
    "$CFLAGS_VAR=-fsanitize=address -fno-omit-frame-pointer${CFLAGS:+ $CFLAGS}"
    LSAN_OPTIONS="suppressions=$PWD/scripts/lsan.supp"
    CARGO_TARGET_DIR=target/asan)
  run "${env[@]}" ASAN_OPTIONS="detect_stack_use_after_return=1" \
    cargo +nightly test --workspace --exclude pinned-ffi-sdks --target "$TARGET" || return
  run "${env[@]}" ASAN_OPTIONS="detect_stack_use_after_return=1:fast_unwind_on_malloc=0" \
    cargo +nightly test -p pinned-ffi-sdks --target "$TARGET"
}
timed "AddressSanitizer" asan

# --- Miri ------------------------------------------------------------------
#
# Miri cannot call foreign (C) functions, so it runs only pinned-ffi's own
# unit tests (--lib): the lane, job, metrics, spin, unwind and waits
# tests, among them the check that a borrowed job is never referenced
# after its caller may free it (job::tests), which is Miri's to judge.
# Tests that start a real owner thread (libc gettid, sched_setaffinity)
# or create a Context are marked #[cfg_attr(miri, ignore)]; the slot
# and doorbell tests are loom models, compiled only with --cfg
# pinned_loom. The integration tests are left
# out: every one starts owner threads (libc gettid, sched_setaffinity) or
# drives the C library.
# Miri builds its sysroot from rust-src; without it, cargo-miri would offer
# to install the component, which this script never does.
miri() {
  run CARGO_TARGET_DIR=target/miri cargo +nightly miri test -p pinned-ffi --lib
}
if ! cargo +nightly miri --version >/dev/null 2>&1; then
  skip "Miri (the nightly toolchain has no miri component)"
elif ! has_rust_src; then
  skip "Miri (the nightly toolchain has no rust-src component, which Miri needs for its sysroot)"
else
  timed "Miri" miri
fi

# --- ThreadSanitizer -------------------------------------------------------
#
# TSan needs std itself instrumented (-Zbuild-std, hence rust-src), or it
# reports races inside std's own synchronisation. The C library is built
# with -fsanitize=thread for the same reason: its C11 atomics hand data to
# and from Rust, and TSan must see them. Doctests are left out: rustdoc
# would have to be given the rebuilt std as well. (Not yet run on a
# machine with rust-src: the first such run may need adjusting.)
tsan() {
  run RUSTFLAGS="-Zsanitizer=thread" \
    "$CFLAGS_VAR=-fsanitize=thread${CFLAGS:+ $CFLAGS}" \
    CARGO_TARGET_DIR=target/tsan \
    cargo +nightly test -Zbuild-std --workspace --target "$TARGET" --lib --bins --tests
}
if ! has_rust_src; then
  skip "ThreadSanitizer (the nightly toolchain has no rust-src component)"
else
  timed "ThreadSanitizer" tsan
fi
