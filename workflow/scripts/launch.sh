#!/usr/bin/env bash
# Launch one `udit` command (train or sample) for a Snakemake job, stop it cleanly before the
# job's time limit, and return its exit status (75 = stopped early: a retry resumes).
#
#   launch.sh NODES GPUS THREADS LEAD_S PYTHON COMMAND [ARGS...]
#
# NODES   torchrun agents, one per node (> 1: srun + c10d rendezvous; needs a SLURM job)
# GPUS    GPUs of the whole job; each agent runs GPUS / NODES ranks (none: 1 CPU rank, gloo)
# THREADS OpenMP / BLAS threads per rank
# LEAD_S  inside a SLURM job, send SIGUSR1 this many seconds before the job's end time
#
# Why a timer here and not `sbatch --signal`: with snakemake-executor-plugin-slurm the rule
# runs under an extra srun step and snakemake processes that SIGUSR1 kills (measured with
# SLURM 22.05 and plugin 2.8.0: `--signal=B:USR1@T` killed the batch shell, `--signal=USR1@T`
# the step's snakemake; both ended the job at once). The end time read from squeue is also the
# limit of this attempt, however Snakemake scaled `runtime` on a retry.
set -euo pipefail
nodes=$1 gpus=$2 threads=$3 lead=$4 py=$5
shift 5
export OMP_NUM_THREADS=$threads OPENBLAS_NUM_THREADS=$threads MKL_NUM_THREADS=$threads
# torchrun passes SIGUSR1 on to its ranks and waits up to LEAD_S for them (default: kill in 30 s);
# a torchrun without --signals-to-handle (older torch) ignores these and dies of SIGUSR1
export PET_SIGNALS_TO_HANDLE=SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1 # torchrun --signals-to-handle
export PET_SHUTDOWN_TIMEOUT=$((lead > 30 ? lead : 30))              # torchrun --shutdown-timeout

per_agent=$((gpus / nodes))
if [ "$nodes" -gt 1 ]; then
    if [ -z "${SLURM_JOB_ID:-}" ]; then
        echo "launch.sh: nodes=$nodes needs a SLURM job (snakemake --profile slurm)" >&2
        exit 2
    fi
    job_nodes=${SLURM_JOB_NUM_NODES:-$nodes}
    first=$(scontrol show hostnames "${SLURM_JOB_NODELIST:-$(hostname -s)}" | head -n 1)
    port=$((29500 + SLURM_JOB_ID % 10000)) # one rendezvous port per job on a shared node
    # --overlap: the rule itself runs in a step that already holds this node's CPUs
    cmd=(srun --overlap --kill-on-bad-exit=0 --nodes="$job_nodes" --ntasks="$nodes"
        --ntasks-per-node=$(((nodes + job_nodes - 1) / job_nodes))
        "$py" -m torch.distributed.run --nnodes="$nodes"
        --nproc_per_node=$((per_agent > 0 ? per_agent : 1))
        --rdzv_backend=c10d --rdzv_endpoint="$first:$port" --rdzv_id="$SLURM_JOB_ID"
        -m udit.cli "$@")
else
    seen=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)
    if [ "$seen" -gt "$gpus" ]; then seen=$gpus; fi
    if [ "$seen" -gt 0 ]; then
        cmd=("$py" -m torch.distributed.run --standalone --nproc_per_node="$seen" -m udit.cli "$@")
    else
        cmd=("$py" -m udit.cli "$@")
    fi
fi

# The command touches this file once its work is done (udit.stop.mark_done): a stop signal that
# arrives after that, while the processes exit, must not turn a finished job into a failure.
done_file=$(mktemp -u "${TMPDIR:-/tmp}/udit-done.XXXXXX")
export UDIT_DONE_FILE=$done_file

"${cmd[@]}" &
child=$!
# A signal the shell gets (scancel --signal, the limit's SIGTERM) goes to the command; `wait`
# returns early on a trapped signal, so wait again until the command has really ended.
trap 'kill -USR1 "$child" 2>/dev/null || true' USR1
trap 'kill -TERM "$child" 2>/dev/null || true' TERM

timer=
if [ -n "${SLURM_JOB_ID:-}" ] && [ "$lead" -gt 0 ] && command -v squeue >/dev/null; then
    end=$(squeue -h -j "$SLURM_JOB_ID" -o %e 2>/dev/null || true)
    end_s=$(date -d "$end" +%s 2>/dev/null || true) # empty for N/A: no time limit
    if [ -n "$end_s" ]; then
        delay=$((end_s - $(date +%s) - lead))
        if [ "$delay" -lt 0 ]; then delay=0; fi
        echo "launch.sh: SIGUSR1 to the command in $delay s ($lead s before the end, $end)" >&2
        (
            trap 'kill "$sleeper" 2>/dev/null; exit 0' TERM
            sleep "$delay" &
            sleeper=$!
            wait "$sleeper"
            if [ ! -e "$done_file" ]; then kill -USR1 "$child" 2>/dev/null || true; fi
        ) &
        timer=$!
    fi
fi

status=0
while :; do
    wait "$child" && status=0 || status=$?
    kill -0 "$child" 2>/dev/null || break
done
if [ -n "$timer" ]; then kill "$timer" 2>/dev/null || true; fi
if [ "$status" -ne 0 ] && [ -e "$done_file" ]; then
    echo "launch.sh: the command had finished its work before it exited with $status; exit 0" >&2
    status=0
fi
rm -f "$done_file"
exit "$status"
