#!/usr/bin/env bash
# Bundle MathJax 3 locally so the built book needs no CDN.
# Usage: scripts/fetch_mathjax.sh [DEST]   (default: book/_static/mathjax/tex-svg.js)
# `npm pack mathjax@3` downloads the package tarball; only es5/tex-svg.js (one self-contained file:
# TeX input + SVG output, fonts inlined) is kept.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dest="${1:-$repo_root/book/_static/mathjax/tex-svg.js}"
version="${MATHJAX_VERSION:-3}"

if ! command -v npm >/dev/null 2>&1; then
    echo "fetch_mathjax.sh: npm is not installed; install Node.js/npm (Debian: apt-get install -y npm)" \
         "or copy MathJax's es5/tex-svg.js to $dest by hand." >&2
    exit 1
fi

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
(cd "$tmp" && npm pack --silent "mathjax@$version" >/dev/null)
tarball="$(ls "$tmp"/mathjax-*.tgz)"
tar -xzf "$tarball" -C "$tmp" package/es5/tex-svg.js
mkdir -p "$(dirname "$dest")"
cp "$tmp/package/es5/tex-svg.js" "$dest.tmp"
mv "$dest.tmp" "$dest"
echo "MathJax $(basename "$tarball" .tgz | sed 's/^mathjax-//') -> $dest"
