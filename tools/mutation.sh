#!/usr/bin/env bash
# Mutation testing of the numerical core with mutmut (pinned in the `mutation` extra).
#
#   bash tools/mutation.sh [kronlin|kronlin_nn|all] [mutmut run arguments…]
#
# Copies the working tree to build/mutation/<scope>/ (mtimes kept, so a rerun re-mutates only
# the functions that changed and keeps the other results), adds the scope's [tool.mutmut]
# section (tools/mutation/<scope>.toml) to pyproject.toml there, runs `mutmut run`, and writes
# docs/results/mutation/<scope>.txt: the score, the duration, every surviving mutant and every
# excluded equivalent mutant with its reason (tools/mutation/<scope>-equivalent.toml).
# See docs/dev/testing.md.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
scope=${1:-kronlin}
shift || true
if [[ $scope == all ]]; then
    for s in kronlin kronlin_nn; do bash "$0" "$s" "$@"; done
    exit 0
fi
config=$root/tools/mutation/$scope.toml
[[ -f $config ]] || { echo "unknown scope '$scope': no $config" >&2; exit 2; }
work=$root/build/mutation/$scope
mkdir -p "$work"
(cd "$root" && git ls-files -co --exclude-standard kronlin kronlin_nn tests pyproject.toml | tar -cf - -T -) \
    | tar -xf - -C "$work"
cat "$root/pyproject.toml" "$config" > "$work/pyproject.toml"
cd "$work"
jobs=${MUTATION_JOBS:-$(getconf _NPROCESSORS_ONLN)}
# one thread per worker: the workers already use every core, and BLAS/OpenMP/Numba thread
# pools do not survive fork() reliably
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 NUMBA_NUM_THREADS=1
export NUMBA_THREADING_LAYER=workqueue PYTHONHASHSEED=0
load=$(cut -d' ' -f1-3 /proc/loadavg)
start=$(date +%s)
mutmut run --max-children "$jobs" "$@" | tr '\r' '\n' | grep -v '^[⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏]' || true
seconds=$(($(date +%s) - start))
mkdir -p "$root/docs/results/mutation"
python "$root/tools/mutation_report.py" --scope "$scope" --seconds "$seconds" --load "$load" \
    --equivalent "$root/tools/mutation/$scope-equivalent.toml" > "$root/docs/results/mutation/$scope.txt"
head -n 12 "$root/docs/results/mutation/$scope.txt"
