#!/usr/bin/env bash
# Builds the replikv image FROM scratch out of release binaries that already exist.
#
#   deploy/build-image.sh [BIN_DIR] [TAG]
#
# BIN_DIR holds kvnode and kvctl (default: target/release, or $CARGO_TARGET_DIR/release; build
# them with `cargo build --release --bin kvnode --bin kvctl`). TAG defaults to replikv:dev.
# The context is a temporary rootfs: the two binaries and each shared library `ldd` lists, copied
# to the same path (symlinks resolved), so the dynamic loader finds them in the image.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bin_dir="${1:-${CARGO_TARGET_DIR:-$root/target}/release}"
tag="${2:-replikv:dev}"

for binary in kvnode kvctl; do
    if [ ! -x "$bin_dir/$binary" ]; then
        echo "build-image: $bin_dir/$binary is missing: run cargo build --release --bin kvnode --bin kvctl" >&2
        exit 1
    fi
done

context="$(mktemp -d)"
trap 'rm -rf "$context"' EXIT
mkdir -p "$context/rootfs/usr/local/bin"
cp "$root/deploy/Dockerfile" "$context/"
for binary in kvnode kvctl; do
    cp "$bin_dir/$binary" "$context/rootfs/usr/local/bin/"
    # Lines look like "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" or
    # "/lib64/ld-linux-x86-64.so.2 (0x...)"; linux-vdso has no file.
    ldd "$bin_dir/$binary" | awk '{ for (i = 1; i <= NF; i++) if ($i ~ /^\//) print $i }' |
        while read -r library; do
            mkdir -p "$context/rootfs$(dirname "$library")"
            cp -L "$library" "$context/rootfs$library"
        done
done
docker build --quiet --tag "$tag" "$context" >/dev/null
echo "built $tag from $bin_dir"
