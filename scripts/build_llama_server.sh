#!/bin/sh
# Build llama.cpp's llama-server from the llama.cpp sources vendored in the llama-cpp-python sdist,
# and cache it under ~/.cache/tunesmith/llama-server/VERSION/ (where `tunesmith serve --engine
# llama.cpp` looks when llama-server is not on PATH). Needs cmake and a C++ compiler.
set -eu
VERSION="${LLAMA_CPP_PYTHON_VERSION:-0.3.36}"
PYTHON="${PYTHON:-python3}"
CACHE="${TUNESMITH_CACHE:-$HOME/.cache/tunesmith}/llama-server/$VERSION"
if [ -x "$CACHE/llama-server" ]; then
    echo "llama-server $VERSION is already built: $CACHE/llama-server"
    exit 0
fi
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
"$PYTHON" -m pip download --quiet --no-deps --no-binary :all: --dest "$WORK" "llama-cpp-python==$VERSION"
tar -xzf "$WORK"/llama_cpp_python-"$VERSION".tar.gz -C "$WORK"
SRC="$WORK/llama_cpp_python-$VERSION/vendor/llama.cpp"
# Portable (no -march=native), static, no curl: the binary runs on any x86-64/arm64 machine of its kind.
cmake -S "$SRC" -B "$WORK/build" -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=OFF -DBUILD_SHARED_LIBS=OFF \
    -DLLAMA_BUILD_SERVER=ON -DLLAMA_BUILD_TOOLS=ON -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
    -DLLAMA_CURL=OFF
cmake --build "$WORK/build" --target llama-server -j "${JOBS:-$(nproc)}"
mkdir -p "$CACHE"
cp "$WORK/build/bin/llama-server" "$CACHE/llama-server.tmp"
mv "$CACHE/llama-server.tmp" "$CACHE/llama-server"
"$CACHE/llama-server" --version || true
echo "built $CACHE/llama-server"
