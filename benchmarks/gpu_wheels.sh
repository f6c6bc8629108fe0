#!/usr/bin/env bash
# Wheels for the GPU run (issue 19), downloaded here, where pip reaches the package index: what
# benchmarks/gpu_suite.py imports beyond torch (benchmarks/gpu_requirements.txt: transformers in
# this project's supported range and its dependencies, at requirements.lock's versions; no Beam)
# for the device's interpreter -- CPython 3.12 on manylinux x86_64 -- into .gpu-wheels/
# (git-ignored; it travels with `carry`; about 32 MB: transformers 13, hf-xet 4, tokenizers 3, ...). The device machine reaches no index: benchmarks/gpu_run.sh
# installs these with `pip install --no-index --find-links`.
#
#     bash benchmarks/gpu_wheels.sh            # then, on the device (the device tool's `run`):
#     run(command="bash benchmarks/gpu_run.sh", carry=[".gpu-wheels"], timeout_s=450)
#
# CROP_GPU_WHEELS (folder), CROP_GPU_PYTHON (version, default 3.12) and PYTHON (the pip to use)
# override the defaults. The total size is printed: the tree that travels must stay under 64 MiB.
set -euo pipefail
cd "$(dirname "$0")/.."
dest=${CROP_GPU_WHEELS:-.gpu-wheels}
pyver=${CROP_GPU_PYTHON:-3.12}
py=${PYTHON:-python3}
rm -rf "$dest"
mkdir -p "$dest"
platforms=()
for p in manylinux_2_39_x86_64 manylinux_2_35_x86_64 manylinux_2_34_x86_64 manylinux_2_31_x86_64 \
         manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 manylinux_2_17_x86_64 \
         manylinux2014_x86_64 manylinux1_x86_64; do
    platforms+=(--platform "$p")
done
"$py" -m pip download --quiet --dest "$dest" --only-binary=:all: --implementation cp \
    --python-version "$pyver" "${platforms[@]}" \
    -c requirements.lock -r benchmarks/gpu_requirements.txt
# numpy: the device image has its own (2.5 in .library/device/KINDS.md; torch needs one), which
# satisfies transformers' numpy>=1.17 -- its 16 MB wheel would only count against the 64 MiB.
rm -f "$dest"/numpy-*.whl
ls -1 "$dest"
echo "total: $(du -sh "$dest" | cut -f1) in $(ls "$dest" | wc -l) wheels ($dest)"
