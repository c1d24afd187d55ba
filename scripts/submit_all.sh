#!/bin/bash
#
# Submit a whole adheat analysis to SLURM as three chained jobs:
#
#   1. participant  array job, one subject per task (CPU)
#   2. fold         array job, one cross-validation fold (of one repeat) per
#                   task (GPU), starts when every task of 1 succeeded (afterok)
#   3. group        one job collecting the folds: SVM baseline, heatmaps,
#                   scores, report (GPU), starts when every fold succeeded
#
#   scripts/submit_all.sh [ADHEAT OPTIONS]
#
# ADHEAT OPTIONS go to every adheat call (e.g. --resolution 2 --model
# rieke2018). Each job runs scripts/slurm_adheat.sh, which reads its settings
# from the environment (sbatch passes the caller's environment):
#   BIDS_DIR, OUTPUT_DIR   required (see slurm_adheat.sh)
#   ADHEAT_SIF          the image, required unless ADHEAT_RUNTIME=none (an
#                       installed adheat on PATH; see slurm_adheat.sh)
#   ADHEAT_FOLDS        number of folds (default 5; with --cv leave-site-out the
#                       number of sites in participants.tsv)
#   ADHEAT_REPEATS      repeats of the cross-validation (--repeats, default 1):
#                       the fold job gets ADHEAT_FOLDS x ADHEAT_REPEATS tasks
#   ADHEAT_PARTICIPANTS_TSV  subject list (default BIDS_DIR/participants.tsv)
#   ADHEAT_SBATCH_OPTS  sbatch options of every job, e.g. "--account=abc"
#   ADHEAT_GPU_OPTS     sbatch options of the fold and group jobs
#                       (default --gres=gpu:1; set it empty for CPU only)
#   ADHEAT_MAX_PARALLEL participant tasks running at once (default 50)
#   ADHEAT_LOG_DIR      folder of the jobs' logs (default OUTPUT_DIR/logs/slurm):
#                       adheat-participant-<job>_<task>.log, adheat-fold-<job>_<task>.log
#                       (task = repeat x ADHEAT_FOLDS + fold),
#                       adheat-group-<job>.log
#
# A failed task ends its log with "slurm_adheat.sh: <mode> task <N> (<subject>)
# ... failed with exit code <code>"; the later jobs then never start (afterok,
# --kill-on-invalid-dep=yes cancels them).
# Prints the three job ids. Cancel everything with: scancel ID1 ID2 ID3

set -euo pipefail

die() {
    echo "submit_all.sh: error: $*" >&2
    exit 2
}

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
job="$here/slurm_adheat.sh"
[ -f "$job" ] || die "$job not found"
if [ "${ADHEAT_RUNTIME:-}" != none ]; then
    : "${ADHEAT_SIF:?set ADHEAT_SIF to the adheat .sif image (or ADHEAT_RUNTIME=none for an installed adheat)}"
fi
: "${BIDS_DIR:?set BIDS_DIR to the input BIDS dataset}"
: "${OUTPUT_DIR:?set OUTPUT_DIR to the output folder}"
command -v sbatch > /dev/null || die "sbatch is not on PATH (run this on a SLURM login node)"

tsv="${ADHEAT_PARTICIPANTS_TSV:-$BIDS_DIR/participants.tsv}"
[ -f "$tsv" ] || die "$tsv not found"
# Rows with a participant_id, as slurm_adheat.sh counts them.
n_subjects="$(awk -F '\t' 'NR > 1 { sub(/\r$/, "", $1) } NR > 1 && $1 != "" { n++ } END { print n + 0 }' "$tsv")"
[ "$n_subjects" -gt 0 ] || die "$tsv lists no participant"
folds="${ADHEAT_FOLDS:-5}"
case "$folds" in '' | *[!0-9]*) die "ADHEAT_FOLDS=$folds is not a whole number" ;; esac
repeats="${ADHEAT_REPEATS:-1}"
case "$repeats" in '' | *[!0-9]* | 0) die "ADHEAT_REPEATS=$repeats is not a whole number of at least 1" ;; esac
jobs=$((folds * repeats))
max_parallel="${ADHEAT_MAX_PARALLEL:-50}"
logs="${ADHEAT_LOG_DIR:-$OUTPUT_DIR/logs/slurm}"
mkdir -p -- "$logs" || die "cannot create the log folder $logs"

read -r -a common <<< "${ADHEAT_SBATCH_OPTS:-}"
if [ -n "${ADHEAT_GPU_OPTS+set}" ]; then
    read -r -a gpu <<< "$ADHEAT_GPU_OPTS"
else
    gpu=(--gres=gpu:1)
fi
export ADHEAT_FOLDS="$folds" ADHEAT_REPEATS="$repeats"

# sbatch --parsable prints "ID" or "ID;CLUSTER".
submit() {
    local out
    out="$(sbatch --parsable "$@")" || die "sbatch $* failed"
    echo "${out%%;*}"
}

participant="$(submit "${common[@]}" --job-name=adheat-participant --array="1-${n_subjects}%${max_parallel}" \
    --output="$logs/%x-%A_%a.log" "$job" participant "$@")"
fold="$(submit "${common[@]}" "${gpu[@]}" --job-name=adheat-fold --array="0-$((jobs - 1))" \
    --output="$logs/%x-%A_%a.log" --dependency="afterok:${participant}" --kill-on-invalid-dep=yes "$job" fold "$@")"
group="$(submit "${common[@]}" "${gpu[@]}" --job-name=adheat-group --output="$logs/%x-%j.log" \
    --dependency="afterok:${fold}" --kill-on-invalid-dep=yes "$job" group "$@")"

echo "participant: $participant (array 1-$n_subjects), fold: $fold (array 0-$((jobs - 1))), group: $group"
