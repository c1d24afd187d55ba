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
#   ADHEAT_FOLDS        number of folds (default: --folds of ADHEAT OPTIONS or of
#                       their --config-file, else 5;
#                       with --cv leave-site-out, on the command line or in
#                       its --config-file: the number of sites, counted in the
#                       site column of participants.tsv over the participants
#                       whose --label-column holds --positive-label or
#                       --negative-label, as adheat counts its folds)
#   ADHEAT_REPEATS      repeats of the cross-validation (default: --repeats of
#                       ADHEAT OPTIONS or their --config-file, else 1): the
#                       fold job gets folds x
#                       repeats tasks, one per repeat and fold
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

# The value of adheat option $1 in the remaining arguments (--name value or --name=value, the last one), else $2.
option() {
    local name="$1" value="$2"
    shift 2
    while [ "$#" -gt 0 ]; do
        case "$1" in
            "$name") [ "$#" -lt 2 ] || value="$2" ;;
            "$name"=*) value="${1#*=}" ;;
        esac
        shift
    done
    printf '%s\n' "$value"
}

# The distinct sites (column "site") of the participants whose label column ($2) holds label $3 or $4.
count_sites() {
    awk -F '\t' -v column="$2" -v positive="$3" -v negative="$4" '
        { sub(/\r$/, "") }
        NR == 1 { for (i = 1; i <= NF; i++) { if ($i == "site") s = i; if ($i == column) d = i }; next }
        s && d && $s != "" && $s != "n/a" && ($d == positive || $d == negative) && !seen[$s]++ { n++ }
        END { print n + 0 }' "$1"
}

# A count from the environment variable $1 (value $2) or from $4 (value $3); the two must agree.
agree() {
    [ -z "$2" ] || [ -z "$3" ] || [ "$2" = "$3" ] || die "$1=$2 but $4 gives $3; unset $1 or make them agree"
    printf '%s\n' "${2:-$3}"
}

config_file="$(option --config-file "" "$@")"
[ -z "$config_file" ] || [ -f "$config_file" ] || die "--config-file $config_file not found"
# A whole-number setting $1 of the --config-file (TOML "key = N" or JSON "key": N), else nothing.
config_value() {
    [ -z "$config_file" ] || sed -n \
        "s/.*\\(^\\|[^[:alnum:]_\"]\\)\"\\{0,1\\}$1\"\\{0,1\\}[[:space:]]*[=:][[:space:]]*\\([0-9][0-9]*\\).*/\\2/p" \
        -- "$config_file" | tail -n 1
}
cv="$(option --cv "" "$@")"
if [ -z "$cv" ] && [ -n "$config_file" ] && grep -q 'leave-site-out' -- "$config_file"; then
    cv=leave-site-out
fi
if [ "$cv" = leave-site-out ]; then
    label_column="$(option --label-column diagnosis "$@")"
    positive="$(option --positive-label AD "$@")"
    negative="$(option --negative-label CN "$@")"
    sites="$(count_sites "$tsv" "$label_column" "$positive" "$negative")"
    [ "$sites" -gt 0 ] || die "--cv leave-site-out: $tsv gives no site (column site) for any $positive or $negative participant (column $label_column)"
    folds="$(agree ADHEAT_FOLDS "${ADHEAT_FOLDS:-}" "$sites" "--cv leave-site-out (sites of $tsv)")"
else
    folds="$(agree ADHEAT_FOLDS "${ADHEAT_FOLDS:-}" "$(option --folds "$(config_value folds)" "$@")" --folds)"
    folds="${folds:-5}"
fi
case "$folds" in '' | *[!0-9]* | 0) die "folds=$folds is not a whole number of at least 1" ;; esac
repeats="$(agree ADHEAT_REPEATS "${ADHEAT_REPEATS:-}" "$(option --repeats "$(config_value repeats)" "$@")" --repeats)"
repeats="${repeats:-1}"
case "$repeats" in '' | *[!0-9]* | 0) die "repeats=$repeats is not a whole number of at least 1" ;; esac
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

echo "participant: $participant (array 1-$n_subjects), fold: $fold (array 0-$((jobs - 1)): $folds folds x $repeats repeats), group: $group"
