#!/usr/bin/env bash
# Regenerates the committed bindings ffi-sys/src/bindings.rs from csrc/affine.h.
# Needs libclang (Debian: apt-get install libclang-dev). CI runs this and fails
# when the result differs from the committed file.
set -euo pipefail
cd "$(dirname "$0")/.."
out_dir=$(cargo build -q -p affine-sys --features buildtime-bindgen --message-format=json \
  | python3 -c 'import json,sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "build-script-executed" and m["package_id"].find("affine-sys") >= 0:
        print(m["out_dir"])')
if [ -z "$out_dir" ] || [ ! -f "$out_dir/bindings.rs" ]; then
  echo "regen-bindings: bindgen produced no bindings.rs" >&2
  exit 1
fi
cp "$out_dir/bindings.rs" ffi-sys/src/bindings.rs
echo "regen-bindings: wrote ffi-sys/src/bindings.rs"
