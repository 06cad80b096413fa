#!/usr/bin/env bash
# Copies template/ out of the workspace, as a user does, points its
# dependencies at this workspace's crates (a user points them at
# crates.io), and builds and tests the copy there. Fails if the template
# leans on anything of the workspace's (inherited keys, relative paths).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
copy=$(mktemp -d)
trap 'rm -rf "$copy"' EXIT
cp -r template "$copy/my-sdk"
cd "$copy/my-sdk"
# The only edit: where the dependencies come from.
sed -i "s#path = \"\.\./#path = \"$root/#" Cargo.toml
if grep -q 'workspace = true' Cargo.toml; then
  echo "template-copy: Cargo.toml inherits from the workspace" >&2
  exit 1
fi
echo "template-copy: building and testing a copy of template/ in $copy/my-sdk"
CARGO_TARGET_DIR="$root/target/template-copy" cargo test
echo "template-copy: the copied template builds and passes its tests"
