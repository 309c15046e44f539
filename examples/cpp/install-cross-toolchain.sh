#!/usr/bin/env bash
# Install the aarch64 cross toolchain (Debian/Ubuntu), with which
#   convc compile ... --target '{"kind": "llvm", "mtriple": "aarch64-linux-gnu"}' -o lib.so
# links an aarch64 shared library. Without it convc writes lib.o and lib_runtime.c and prints the
# command that links them on an aarch64 machine. Optional: nothing else in convc needs it.
#
#   bash examples/cpp/install-cross-toolchain.sh          # no-op when already installed
set -euo pipefail

if command -v aarch64-linux-gnu-g++ >/dev/null 2>&1; then
    echo "aarch64-linux-gnu-g++ is already installed"
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "no apt-get: install an aarch64-linux-gnu g++ cross compiler with your package manager" >&2
    exit 1
fi
sudo=""
if [ "$(id -u)" -ne 0 ]; then
    sudo="sudo"
fi
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends g++-aarch64-linux-gnu
aarch64-linux-gnu-g++ --version | head -1
