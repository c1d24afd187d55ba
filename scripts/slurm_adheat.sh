#!/bin/bash
#SBATCH --job-name=adheat
#SBATCH --cpus-per-task=8
#SBATCH --mem=32G
#SBATCH --time=24:00:00
#SBATCH --output=%x-%A_%a.log
#
# Run adheat under SLURM, from its Singularity/Apptainer image or, with
# ADHEAT_RUNTIME=none, from an installed adheat (conda or venv) on PATH.
#
#   sbatch --array=1-N           slurm_adheat.sh participant [ADHEAT OPTIONS]
#       one subject per array task: task N takes the N-th participant_id of
#       participants.tsv (1-based, header excluded)
#   sbatch --array=0-4 --gres=gpu:1 slurm_adheat.sh fold [ADHEAT OPTIONS]
#       one cross-validation fold per array task: task K runs
#       'group --fold K' (folds are 0-based, as adheat's --fold); with
#       ADHEAT_REPEATS=R > 1 the array is 0-(R*F-1) and task T runs fold
#       T % F of repeat T / F ('group --fold K --repeat R --repeats R')
#   sbatch --gres=gpu:1          slurm_adheat.sh group [ADHEAT OPTIONS]
#       collects the folds: SVM baseline, group heatmaps, scores, report
#
# scripts/submit_all.sh submits all three, chained with --dependency=afterok.
#
# Settings (environment variables; sbatch passes the caller's environment):
#   ADHEAT_SIF         path to adheat-<version>.sif (required unless ADHEAT_RUNTIME=none)
#   BIDS_DIR           input BIDS dataset, bound read-only            (required)
#   OUTPUT_DIR         output derivatives dataset (created if absent)  (required)
#   ADHEAT_FOLDS       number of cross-validation folds               (default 5;
#                      with --cv leave-site-out: the number of sites)
#   ADHEAT_REPEATS     repeats of the cross-validation (--repeats)     (default 1)
#   ADHEAT_DEVICE      cpu, cuda or auto; default: cuda when SLURM gave
#                      this job a GPU (CUDA_VISIBLE_DEVICES), else cpu
#   ADHEAT_WORK_DIR    work folder; default: a fresh folder on node-local
#                      scratch ($SLURM_TMPDIR or $TMPDIR), deleted at the end
#   ADHEAT_PARTICIPANTS_TSV  subject list; default BIDS_DIR/participants.tsv
#   ADHEAT_RUNTIME     apptainer, singularity, or none (no container: run
#                      the adheat on PATH, e.g. of an activated conda or venv
#                      environment); default: apptainer or singularity on PATH
#   ADHEAT_EXE         adheat executable for ADHEAT_RUNTIME=none  (default adheat)
#   ADHEAT_DRY_RUN=1   print the command instead of running it
#
# Exit code: adheat's (0 ok, 1 run failure, 2 usage or input error). A failed
# run ends its log with "slurm_adheat.sh: <mode> task <N> (<subject>) failed
# with exit code <code>".

set -euo pipefail

die() {
    echo "slurm_adheat.sh: error: $*" >&2
    exit 2
}

usage="usage: sbatch [--array=...] slurm_adheat.sh participant|fold|group [ADHEAT OPTIONS]"
[ "$#" -ge 1 ] || die "$usage"
mode="$1"
shift

: "${BIDS_DIR:?set BIDS_DIR to the input BIDS dataset}"
: "${OUTPUT_DIR:?set OUTPUT_DIR to the output folder}"
[ -d "$BIDS_DIR" ] || die "BIDS_DIR=$BIDS_DIR is not a folder"
runtime="${ADHEAT_RUNTIME:-}"
if [ -z "$runtime" ]; then
    if command -v apptainer > /dev/null; then
        runtime=apptainer
    elif command -v singularity > /dev/null; then
        runtime=singularity
    else
        die "neither apptainer nor singularity is on PATH (module load apptainer?), and ADHEAT_RUNTIME=none is not set"
    fi
fi
case "$runtime" in
    apptainer | singularity)
        : "${ADHEAT_SIF:?set ADHEAT_SIF to the adheat .sif image (or ADHEAT_RUNTIME=none for an installed adheat)}"
        [ -f "$ADHEAT_SIF" ] || die "ADHEAT_SIF=$ADHEAT_SIF is not a file"
        ;;
    none)
        exe="${ADHEAT_EXE:-adheat}"
        command -v "$exe" > /dev/null || die "ADHEAT_RUNTIME=none: $exe is not on PATH (activate the environment adheat is installed in, or set ADHEAT_EXE)"
        ;;
    *) die "ADHEAT_RUNTIME=$runtime: use apptainer, singularity or none" ;;
esac
folds="${ADHEAT_FOLDS:-5}"
case "$folds" in '' | *[!0-9]*) die "ADHEAT_FOLDS=$folds is not a whole number" ;; esac
repeats="${ADHEAT_REPEATS:-1}"
case "$repeats" in '' | *[!0-9]* | 0) die "ADHEAT_REPEATS=$repeats is not a whole number of at least 1" ;; esac
# --repeats only where the cross-validation is repeated (one repeat is the plain run).
repeat_opts=()
if [ "$repeats" -gt 1 ]; then
    repeat_opts=(--repeats "$repeats")
fi

# The N-th participant_id (first column) of a participants.tsv, N >= 1.
nth_participant() {
    awk -F '\t' -v n="$2" 'NR > 1 { sub(/\r$/, "", $1) } NR > 1 && $1 != "" && ++i == n { print $1; exit }' "$1"
}

task="${SLURM_ARRAY_TASK_ID:-}"
case "$mode" in
    participant)
        [ -n "$task" ] || die "participant: submit as an array job, e.g. sbatch --array=1-N"
        tsv="${ADHEAT_PARTICIPANTS_TSV:-$BIDS_DIR/participants.tsv}"
        [ -f "$tsv" ] || die "$tsv not found"
        label="$(nth_participant "$tsv" "$task")"
        [ -n "$label" ] || die "array task $task: $tsv has fewer than $task participants"
        level=(participant --participant-label "${label#sub-}" --nprocs 1)
        ;;
    fold)
        jobs=$((folds * repeats))
        [ -n "$task" ] || die "fold: submit as an array job, e.g. sbatch --array=0-$((jobs - 1))"
        [ "$task" -lt "$jobs" ] || die "array task $task: folds are numbered 0 to $((jobs - 1)) ($folds folds x $repeats repeats)"
        level=(group --folds "$folds" --fold "$((task % folds))" --nprocs 1)
        if [ "$repeats" -gt 1 ]; then
            level+=(--repeat "$((task / folds))" "${repeat_opts[@]}")
        fi
        ;;
    group)
        level=(group --folds "$folds" "${repeat_opts[@]}")
        ;;
    *)
        die "unknown mode '$mode'; $usage"
        ;;
esac

# GPU or CPU: a GPU job (sbatch --gres=gpu:1 or --gpus=1) gets --nv and cuda.
gpus="${CUDA_VISIBLE_DEVICES:-}"
[ "$gpus" = "NoDevFiles" ] && gpus=""
if [ -n "${ADHEAT_DEVICE:-}" ]; then
    device="$ADHEAT_DEVICE"
elif [ -n "$gpus" ]; then
    device=cuda
else
    device=cpu
fi
case "$device" in cpu | cuda | auto) ;; *) die "ADHEAT_DEVICE=$device: use cpu, cuda or auto" ;; esac

container_opts=(--cleanenv)
if [ "$device" != cpu ]; then
    container_opts+=(--nv)
    # --cleanenv drops the host environment: hand over the GPUs SLURM assigned.
    if [ -n "$gpus" ]; then
        export SINGULARITYENV_CUDA_VISIBLE_DEVICES="$gpus" APPTAINERENV_CUDA_VISIBLE_DEVICES="$gpus"
    fi
fi

# Work folder: node-local scratch, one per task, removed when the job ends
# (the results are in OUTPUT_DIR; the work folder holds caches only).
if [ -n "${ADHEAT_WORK_DIR:-}" ]; then
    work="$ADHEAT_WORK_DIR"
else
    scratch="${SLURM_TMPDIR:-${TMPDIR:-/tmp}}"
    work="$scratch/adheat-work-${SLURM_JOB_ID:-$$}-${task:-0}"
    trap 'rm -rf -- "$work"' EXIT
fi
mkdir -p -- "$work" "$OUTPUT_DIR"

threads="${SLURM_CPUS_PER_TASK:-1}"
resources=(--omp-nthreads "$threads")
if [ -n "${SLURM_MEM_PER_NODE:-}" ]; then
    resources+=(--mem-gb "$((SLURM_MEM_PER_NODE / 1024))")
fi

if [ "$runtime" = none ]; then
    cmd=("$exe" "$BIDS_DIR" "$OUTPUT_DIR" "${level[@]}"
        --work-dir "$work" --device "$device" "${resources[@]}" "$@")
else
    cmd=("$runtime" run "${container_opts[@]}"
        -B "$BIDS_DIR:/data/bids:ro" -B "$OUTPUT_DIR:/out" -B "$work:/work"
        "$ADHEAT_SIF" /data/bids /out "${level[@]}"
        --work-dir /work --device "$device" "${resources[@]}" "$@")
fi

echo "[$(date '+%F %T')] $(hostname): ${cmd[*]}" >&2
if [ "${ADHEAT_DRY_RUN:-0}" = 1 ]; then
    printf '%q ' "${cmd[@]}"
    printf '\n'
    exit 0
fi
# Not exec: the EXIT trap must still clean the scratch folder.
status=0
"${cmd[@]}" || status=$?
if [ "$status" -ne 0 ]; then
    echo "slurm_adheat.sh: $mode task ${task:-(none)}${label:+ (sub-${label#sub-})} of job ${SLURM_JOB_ID:-?} failed with exit code $status" >&2
fi
exit "$status"
