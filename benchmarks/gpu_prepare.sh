#!/usr/bin/env bash
# Run here (no GPU needed), before benchmarks/gpu_checks.sh runs on the lent GPU machine: packs
# into .gpu/ (git-ignored) what that machine lacks and cannot download, since it reaches nothing:
#
#   .gpu/wheels/  hydra-core, omegaconf and antlr4-python3-runtime at this venv's versions (pure
#                 Python wheels: the machine's Python 3.12 takes them; it has torch, lightning,
#                 torchvision, rich and the rest, see the device tool's KINDS.md)
#   .gpu/mnist/   the four MNIST files, gzipped (11 MB instead of 53: the working tree that
#                 travels, carried paths included, must stay under 64 MiB)
#
#   bash benchmarks/gpu_prepare.sh
#
# Then one device call runs every check: run(command="bash benchmarks/gpu_checks.sh",
# carry=[".gpu"], timeout_s=600). gpu_checks.sh installs the wheels to a temporary folder and
# unpacks MNIST there itself, and stops its own steps before 600 s (BUDGET_S).
set -euo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON:-.venv/bin/python}
data=${VAELAB_DATA_DIR:-../shared/data}
raw="$data/MNIST/raw"
files=(train-images-idx3-ubyte train-labels-idx1-ubyte t10k-images-idx3-ubyte t10k-labels-idx1-ubyte)
for f in "${files[@]}"; do
    [ -f "$raw/$f" ] || { echo "no $raw/$f: set VAELAB_DATA_DIR to the MNIST root" >&2; exit 1; }
done
rm -rf .gpu
mkdir -p .gpu/wheels .gpu/mnist
pins=()
for pkg in hydra-core omegaconf antlr4-python3-runtime; do
    ver=$("$py" -m pip show "$pkg" | awk '/^Version:/ {print $2}')
    [ -n "$ver" ] || { echo "$pkg is not installed in $py's environment (make install)" >&2; exit 1; }
    pins+=("$pkg==$ver")
done
# antlr4-python3-runtime 4.9.3 is published as a source archive only: pip builds its wheel here.
"$py" -m pip wheel -q --no-deps --no-build-isolation -w .gpu/wheels "${pins[@]}"
for f in "${files[@]}"; do
    gzip -c "$raw/$f" >".gpu/mnist/$f.gz"
done
ls -l .gpu/wheels .gpu/mnist
echo "working tree that travels (tracked files, untracked files git does not ignore, .gpu):"
du -ch $(git ls-files) $(git ls-files --others --exclude-standard) .gpu 2>/dev/null | tail -1
