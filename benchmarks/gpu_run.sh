#!/usr/bin/env bash
# The GPU run (issue 19) on the device machine, which reaches no package index: a venv that sees
# the system torch, transformers & co. installed offline from .gpu-wheels/ (made here by
# benchmarks/gpu_wheels.sh), then benchmarks/gpu_suite.py on CUDA, writing gpu_suite.json,
# gpu_suite.md and gpu_suite.log into $OUT (the device tool's folder that comes back) or
# benchmarks/results/gpu. With the device tool:
#
#     run(command="bash benchmarks/gpu_run.sh", carry=[".gpu-wheels"], timeout_s=450)
#
# Arguments go to gpu_suite.py (e.g. --skip next13b, --limit ahead=60). Why a .pth file: the
# device's python3 is itself a venv (/opt/torch/.venv), and `venv --system-site-packages` exposes
# the *base* interpreter's site-packages, not that venv's (where torch is); the .pth adds the
# launching interpreter's site-packages after the new venv's own, so the wheels installed here
# (transformers 5.25, huggingface-hub 2.4, ...) win over the image's older ones.
set -euo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON:-python3}
venv=${CROP_GPU_VENV:-/tmp/crop-gpu-venv}
wheels=${CROP_GPU_WHEELS:-.gpu-wheels}
out=${OUT:-benchmarks/results/gpu}
mkdir -p "$out"
[ -d "$wheels" ] || { echo "no $wheels: run benchmarks/gpu_wheels.sh here and carry it" >&2; exit 2; }
"$py" -m venv --system-site-packages "$venv" 2>/dev/null || "$py" -m venv --without-pip --system-site-packages "$venv"
site=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
"$py" -c 'import site; print("\n".join(site.getsitepackages()))' > "$site/crop_parent_site.pth"
if "$venv/bin/python" -m pip --version >/dev/null 2>&1; then
    pip=("$venv/bin/python" -m pip)
else
    pip=("$py" -m pip --python "$venv/bin/python")
fi
"${pip[@]}" install --quiet --no-index --find-links "$wheels" --no-cache-dir -r benchmarks/gpu_requirements.txt
"$venv/bin/python" -c 'import torch, transformers; print("torch", torch.__version__, "transformers", transformers.__version__, "cuda", torch.cuda.is_available())'
set -o pipefail
PYTHONPATH="$PWD" PYTHONUNBUFFERED=1 "$venv/bin/python" benchmarks/gpu_suite.py --device "${CROP_GPU_DEVICE:-cuda}" \
    --out "$out" "$@" 2>&1 | tee "$out/gpu_suite.log"
