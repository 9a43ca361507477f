#!/bin/sh
# libnghttp2 (the library only) from its release tarball into PREFIX, for the wheel builds (cibuildwheel.toml
# before-all): the manylinux/musllinux images' own packages are too old or absent (1.61 or later is needed for
# nghttp2_option_set_max_continuations, CVE-2024-28182). auditwheel / delocate then bundle it into each wheel.
# Usage: build-nghttp2.sh PREFIX
set -eu
PREFIX=${1:?usage: build-nghttp2.sh PREFIX}
VERSION=${NGHTTP2_VERSION:-1.64.0}
work=$(mktemp -d)
cd "$work"
curl -fsSL -o nghttp2.tar.gz "https://github.com/nghttp2/nghttp2/releases/download/v$VERSION/nghttp2-$VERSION.tar.gz"
tar -xzf nghttp2.tar.gz
cd "nghttp2-$VERSION"
./configure --prefix="$PREFIX" --enable-lib-only --disable-static --disable-dependency-tracking >/dev/null
make -j"$(getconf _NPROCESSORS_ONLN 2>/dev/null || echo 2)" >/dev/null
make install >/dev/null
command -v ldconfig >/dev/null 2>&1 && ldconfig 2>/dev/null || true
echo "libnghttp2 $VERSION installed into $PREFIX"
