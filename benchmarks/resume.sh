#!/usr/bin/env bash
# Resume after a kill: start the extraction of TARGET, kill -9 its job once MIN_CHUNKS chunks
# are recorded, rerun Snakemake, and print the times and the resume line of the job's log.
# Compare the store with an uninterrupted one with `circuitflow verify` and its manifest.
#   bash benchmarks/resume.sh [WORKDIR] [TARGET] [MIN_CHUNKS]
# WORKDIR needs config.yaml, resources/models/<model> and results/datasets/<dataset> (or lets
# Snakemake build them first); defaults: the repo, SmolLM2's emotion store, 2 chunks.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
WORK="${1:-$ROOT}"
TARGET="${2:-results/activations/emotion/smollm2-135m.zarr}"
MIN_CHUNKS="${3:-2}"
SMK=("$ROOT/.venv/bin/snakemake" -s "$ROOT/Snakefile" -d "$WORK" --cores 2)
export HF_HUB_OFFLINE=1
cd "$WORK"
rm -rf "$TARGET"
t0=$(date +%s)
"${SMK[@]}" "$TARGET" > resume-run1.log 2>&1 &
SPID=$!
PROGRESS=""
while sleep 2; do
  PROGRESS=$(find .snakemake/circuitflow/work -name progress.json 2>/dev/null | head -1)
  if [ -n "$PROGRESS" ] && python3 -c "import json,sys; sys.exit(len(json.load(open('$PROGRESS'))['done']) < $MIN_CHUNKS)"; then
    break
  fi
  kill -0 "$SPID" 2>/dev/null || { echo "snakemake ended before $MIN_CHUNKS chunks"; exit 1; }
done
pkill -9 -f "snakemake/scripts/tmp.*extract_activations" || true
wait "$SPID" || true
echo "killed after $(( $(date +%s) - t0 )) s with chunks $(python3 -c "import json; print(json.load(open('$PROGRESS'))['done'])") done"
t1=$(date +%s)
"${SMK[@]}" "$TARGET" > resume-run2.log 2>&1
echo "rerun finished in $(( $(date +%s) - t1 )) s"
grep -h "resuming" logs/extract_activations/*/*.log || echo "no resume line: the job started afresh"
"$ROOT/.venv/bin/circuitflow" verify "$TARGET"
