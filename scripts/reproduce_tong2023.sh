#!/usr/bin/env bash
# Tong et al.'s 2-D benchmark end to end: train a grid, score every run at the published
# protocol (Euler x 100 steps, exact W2 and NPE on 1,000 and on 10,000 test points, one draw
# per run: the spread is over the 5 seeds, as published), write the tables (table.md: next to
# the published cells, scripts/tong2023_table.py). docs/results.md.
#
#   scripts/reproduce_tong2023.sh                                      # published protocol
#   scripts/reproduce_tong2023.sh examples/tong2023_2d_defaults.yaml   # flowctl's defaults
#
# Idempotent: a re-run skips finished points (flowctl sweep), evaluations already saved and
# tables already written, so after a crash or a kill run the same command. Environment:
# OUT (default tong2023-results/GROUP), PARALLEL (points at once; default one per core),
# SIZES (test points per evaluation, default "1000 10000"), EVAL_PARALLEL (evaluations at
# once, default 1; ~4.4 GB each at 10,000 points), FLOWCTL (default flowctl),
# FLOWCTL_CKPT_DIR (the runs' root, as for flowctl).
set -euo pipefail

GRID=${1:-examples/tong2023_2d.yaml}
FLOWCTL=${FLOWCTL:-flowctl}
GROUP=$(sed -n 's/^group: *//p' "$GRID")
OUT=${OUT:-tong2023-results/$GROUP}
SIZES=${SIZES:-1000 10000}
mkdir -p "$OUT/evals"

$FLOWCTL sweep "$GRID" --wandb-mode disabled --plain ${PARALLEL:+--parallel "$PARALLEL"}

RUNS=$($FLOWCTL list-runs --json --group "$GROUP" --status finished,early_stopped |
       python3 -c 'import json, sys; print("\n".join(r["run_name"] for r in json.load(sys.stdin)))')

evaluate() {  # evaluate RUN N: one draw at the published protocol, saved atomically
    local saved="$OUT/evals/$1-n$2.json"
    if [[ -s "$saved" ]]; then return; fi
    $FLOWCTL eval "$1" --n "$2" --draws 1 --solver euler --steps 100 --json > "$saved.tmp"
    mv "$saved.tmp" "$saved"
}
export -f evaluate
export FLOWCTL OUT

# In the order given (1,000 first): eval.json holds a run's latest evaluation, which
# `flowctl compare` reads, so each n's tables are written before the next n overwrites it.
for n in $SIZES; do
    if [[ -f "$OUT/npe-n$n.md" ]]; then continue; fi
    # exact W2 on 10,000 points peaks at ~4.4 GB per evaluation: EVAL_PARALLEL by memory
    printf '%s\n' $RUNS | xargs -r -P "${EVAL_PARALLEL:-1}" -I{} bash -c 'evaluate "$1" "$2"' _ {} "$n"
    for metric in w2 npe; do
        $FLOWCTL compare --group "$GROUP" --by flow,dataset --metric "eval_$metric" --markdown \
            > "$OUT/$metric-n$n.md.tmp"
        mv "$OUT/$metric-n$n.md.tmp" "$OUT/$metric-n$n.md"
    done
done
# Every size, W2 and NPE side by side with [SF]2M's published cells (mean ± std over seeds).
if [[ ! -f "$OUT/table.md" ]]; then
    python3 "$(dirname "$0")/tong2023_table.py" "$OUT" > "$OUT/table.md.tmp"
    mv "$OUT/table.md.tmp" "$OUT/table.md"
fi
echo "tables: $OUT/table.md, $OUT/{w2,npe}-n{${SIZES// /,}}.md; every evaluation: $OUT/evals/"
