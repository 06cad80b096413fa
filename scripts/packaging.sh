#!/usr/bin/env bash
# What a user adding the crates gets:
#  1. pinned-ffi's dependency tree has no C build and no -sys crate;
#  2. a crate depending only on pinned-ffi builds with no C compiler;
#  3. the three published crates package and pass a publish dry run
#     (never a real publish), each verified by building the package.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

echo "packaging: cargo tree -p pinned-ffi -e normal,build"
tree=$(cargo tree -p pinned-ffi -e normal,build --prefix none)
echo "$tree" | sort -u
if echo "$tree" | grep -Eq '^(cc|bindgen|affine|affine-sys|ffi-sys) '; then
  echo "packaging: pinned-ffi's tree contains a C build or the toy library" >&2
  exit 1
fi

echo "packaging: a scratch crate that depends only on pinned-ffi, built with CC=/bin/false"
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
mkdir -p "$scratch/src"
cat >"$scratch/Cargo.toml" <<TOML
[package]
name = "uses-pinned-ffi"
version = "0.1.0"
edition = "2021"
publish = false

[dependencies]
pinned-ffi = { path = "$root/pinned-ffi" }
TOML
cat >"$scratch/src/main.rs" <<'RS'
fn main() {
    let w = pinned_ffi::PinnedWorker::spawn(|| Ok::<_, std::io::Error>(std::rc::Rc::new(41u64))).unwrap();
    assert_eq!(w.run(|n| **n + 1).unwrap(), 42);
    println!("a pinned worker answered without any C compiled");
}
RS
(cd "$scratch" && CC=/bin/false CXX=/bin/false CARGO_TARGET_DIR="$root/target/no-c" cargo run -q)

echo "packaging: cargo package and publish --dry-run of affine-sys, affine, pinned-ffi"
cargo package -p affine-sys -p affine -p pinned-ffi
cargo package -p affine-sys --list | grep -q '^csrc/affine.c$' || {
  echo "packaging: the affine-sys package lacks csrc/affine.c" >&2
  exit 1
}
cargo publish --dry-run -p affine-sys -p affine -p pinned-ffi
echo "packaging: all three crates package; pinned-ffi needs no C"
