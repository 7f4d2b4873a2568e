# shellcheck shell=bash
# Shared by the hpctrain Slurm templates (slurm/*.sbatch): sourced by them, never run on its own.
#
# Finding it: Slurm runs a copy of the batch script from its spool folder, so a template looks for common.sh in
# $HPCTRAIN_SLURM_DIR (`hpctrain submit` sets it), else next to the original script (Command= of `scontrol show
# job`, the script's path followed by its arguments), else next to the script itself (`bash slurm/x.sbatch`
# outside Slurm), else in $SLURM_SUBMIT_DIR/slurm. HPCTRAIN_SLURM_DIR is then the folder it was found in.
#
# It sets `set -uo pipefail` and gives a template:
#   HPCTRAIN               the hpctrain command as an array ("${HPCTRAIN[@]}" train ...): apptainer exec --nv
#                          "$HPCTRAIN_IMAGE" hpctrain when HPCTRAIN_IMAGE is set, else $HPCTRAIN_BIN or hpctrain
#   hpctrain_begin NAME BACKEND SPEC [ARG...]   what a training template does first: TRAIN_ARGS for --backend
#                          BACKEND, the header, and for horovod (one rank per GPU) the layout of hpctrain_gpu_layout
#   hpctrain_header        the job header: id, nodes, tasks, GPUs, restarts, then `hpctrain env`
#   hpctrain_train_args    TRAIN_ARGS=(train SPEC --resume [--set data.stage_dir=...] [template args] [user args])
#   hpctrain_gpu_layout    one task per GPU: LAYOUT (srun options), TASKS, TASKS_PER_NODE of the job step
#   HPCTRAIN_RANK          prefix of each rank of an srun/mpirun step (keeps exit code 75 from killing peers)
#   hpctrain_step CMD...   runs the job step in the background and waits for it; USR1 (the time-limit warning
#                          of #SBATCH --signal=B:USR1@120), TERM and INT to the batch shell go on to the step
#                          (srun and mpirun pass them to every rank); when the step exits 75 (stopped by a
#                          signal, checkpoint saved) the job is requeued and continues from the checkpoint.
#
# Environment (all optional; put site-wide settings in slurm/site.env):
#   HPCTRAIN_SITE_ENV      file sourced first (default: site.env next to this file) - modules, PATH, proxies
#   HPCTRAIN_BIN           hpctrain outside a container (default: hpctrain on PATH)
#   HPCTRAIN_IMAGE         Apptainer image (.sif); bind extra folders with APPTAINER_BIND
#   HPCTRAIN_STAGE_DIR     node-local folder the data is copied to first (--set data.stage_dir=...)
#   HPCTRAIN_INTERFACE     network interface of every transport (MPI, Gloo, NCCL, TF_CONFIG), e.g. ib0
#   HPCTRAIN_MAX_REQUEUES  how often a job requeues itself at most (default 10)
#
# Every value reaches commands as a quoted argument (arrays, "$@"); nothing is ever eval'ed.

set -uo pipefail
HPCTRAIN_SLURM_DIR=$(dirname -- "${BASH_SOURCE[0]}")

_hpctrain_site_env=${HPCTRAIN_SITE_ENV:-$HPCTRAIN_SLURM_DIR/site.env}
if [ -f "$_hpctrain_site_env" ]; then
  # shellcheck source=site.env
  source "$_hpctrain_site_env" || { echo "hpctrain: $_hpctrain_site_env failed" >&2; exit 2; }
fi

# srun of Slurm 22.05-23.02 does not read SLURM_CPUS_PER_TASK; this keeps --cpus-per-task for the job step.
if [ -n "${SLURM_CPUS_PER_TASK:-}" ]; then export SRUN_CPUS_PER_TASK=${SRUN_CPUS_PER_TASK:-$SLURM_CPUS_PER_TASK}; fi

if [ -n "${HPCTRAIN_IMAGE:-}" ]; then
  HPCTRAIN=(apptainer exec --nv "$HPCTRAIN_IMAGE" hpctrain)
else
  HPCTRAIN=("${HPCTRAIN_BIN:-hpctrain}")
fi

# HPCTRAIN_INTERFACE: the network every transport uses (mpirun's own runtime too), as distribute.interface.
if [ -n "${HPCTRAIN_INTERFACE:-}" ]; then
  while IFS= read -r _hpctrain_var; do export "${_hpctrain_var?}"; done \
    < <("${HPCTRAIN[@]}" env --interface-variables "$HPCTRAIN_INTERFACE")
fi

# Prefix of one rank of an srun or mpirun step: "${HPCTRAIN_RANK[@]}" "${HPCTRAIN[@]}" train ...
# hpctrain's exit code 75 (stopped by a signal, checkpoint saved) becomes 0 here, since srun
# --kill-on-bad-exit and mpirun kill the ranks still finishing when one exits non-zero (the chief may be
# writing the checkpoint; srun then reports 143); rank 0 leaves the file $HPCTRAIN_STOPPED instead, which
# hpctrain_step turns back into 75. Signals reach hpctrain itself: srun and mpirun signal the rank's
# process group; the wrapper only outlives them to pass the exit code on.
# shellcheck disable=SC2016
HPCTRAIN_RANK=(bash -c 'trap : USR1 TERM INT
"$@"
rc=$?
if [ "$rc" = 75 ]; then
  if [ -n "${HPCTRAIN_STOPPED:-}" ] && [ "${OMPI_COMM_WORLD_RANK:-${PMIX_RANK:-${SLURM_PROCID:-0}}}" = 0 ]; then
    : > "$HPCTRAIN_STOPPED"
  fi
  exit 0
fi
exit "$rc"' hpctrain-rank)

_hpctrain_say() { printf '=== hpctrain: %s\n' "$*"; }

# The command line, quoted as a shell would need it (for the log only; the rank wrapper is abbreviated).
_hpctrain_quoted() {
  local out="" arg
  for arg in "$@"; do
    if [ "$arg" = "${HPCTRAIN_RANK[2]}" ]; then out+=" <HPCTRAIN_RANK>"; else printf -v out '%s %q' "$out" "$arg"; fi
  done
  printf '%s' "${out# }"
}

hpctrain_header() {
  local template=$1
  _hpctrain_say "job ${SLURM_JOB_ID:-(not in Slurm)} \"${SLURM_JOB_NAME:-}\"" \
    "(template $template, restart ${SLURM_RESTART_COUNT:-0})"
  _hpctrain_say "started $(date '+%F %T %Z') on $(hostname) in $PWD"
  _hpctrain_say "nodes ${SLURM_JOB_NUM_NODES:-1} (${SLURM_JOB_NODELIST:-$(hostname)});" \
    "tasks ${SLURM_NTASKS:-1} (${SLURM_TASKS_PER_NODE:-1} per node); CPUs per task ${SLURM_CPUS_PER_TASK:-1}"
  _hpctrain_say "GPUs on this node ${SLURM_GPUS_ON_NODE:-0} (CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES-unset})"
  _hpctrain_say "time limit warning: SIGUSR1 (requeue with --resume); image ${HPCTRAIN_IMAGE:-none};" \
    "stage dir ${HPCTRAIN_STAGE_DIR:-none}"
  _hpctrain_say "hpctrain env:"
  "${HPCTRAIN[@]}" env || _hpctrain_say "hpctrain env failed (exit $?)"
}

# TOML string of a value (the override parser reads TOML), so any path survives --set.
_hpctrain_toml_string() {
  local s=${1//\\/\\\\}
  s=${s//\"/\\\"}
  printf '"%s"' "$s"
}

# hpctrain_train_args SPEC [ARG...]: TRAIN_ARGS for `hpctrain` (template defaults before the user's ARGs,
# so the user's --set/--backend win).
hpctrain_train_args() {
  if [ $# -lt 1 ] || [ -z "$1" ]; then
    echo "hpctrain: usage: sbatch [sbatch options] TEMPLATE JOB.toml [hpctrain train options]" >&2
    exit 2
  fi
  local spec=$1
  shift
  TRAIN_ARGS=(train "$spec" --resume)
  if [ -n "${HPCTRAIN_STAGE_DIR:-}" ]; then
    TRAIN_ARGS+=(--set "data.stage_dir=$(_hpctrain_toml_string "$HPCTRAIN_STAGE_DIR")")
  fi
  TRAIN_ARGS+=(${TEMPLATE_ARGS[@]+"${TEMPLATE_ARGS[@]}"} "$@")
}

# One task per GPU. With GPUs allocated (--gpus-per-node, --gres=gpu:N) and another number of tasks per node,
# the step runs one task per GPU and shares the node's CPUs among them: LAYOUT holds srun's options for that
# (empty: the job's own layout), TASKS and TASKS_PER_NODE the step's counts.
# shellcheck disable=SC2034  # LAYOUT, TASKS, TASKS_PER_NODE are for the templates
hpctrain_gpu_layout() {
  local gpus=${SLURM_GPUS_ON_NODE:-0} per_node=${SLURM_TASKS_PER_NODE:-1} nodes=${SLURM_JOB_NUM_NODES:-1} cpus
  per_node=${per_node%%[(,]*}
  TASKS_PER_NODE=$per_node TASKS=${SLURM_NTASKS:-$((per_node * nodes))} LAYOUT=()
  if [ "$gpus" -gt 0 ] && [ "$gpus" != "$per_node" ]; then
    TASKS_PER_NODE=$gpus TASKS=$((gpus * nodes)) cpus=$(( ${SLURM_CPUS_ON_NODE:-$gpus} / gpus ))
    [ "$cpus" -ge 1 ] || cpus=1
    LAYOUT=(--ntasks-per-node="$TASKS_PER_NODE" --ntasks="$TASKS" --cpus-per-task="$cpus")
    _hpctrain_say "one task per GPU: $TASKS_PER_NODE tasks per node x $nodes nodes, $cpus CPUs each"
  fi
}

# hpctrain_begin NAME BACKEND SPEC [ARG...]: TRAIN_ARGS with --backend BACKEND (before any TEMPLATE_ARGS), the
# header of template NAME and, for horovod (one rank per GPU), hpctrain_gpu_layout.
hpctrain_begin() {
  local name=$1 backend=$2
  shift 2
  TEMPLATE_ARGS=(--backend "$backend" ${TEMPLATE_ARGS[@]+"${TEMPLATE_ARGS[@]}"})
  hpctrain_train_args "$@"
  hpctrain_header "$name"
  if [ "$backend" = horovod ]; then hpctrain_gpu_layout; fi
}

_hpctrain_forward() {
  _hpctrain_say "got SIG$1 at $(date '+%F %T'); passing it to the job step (pid $_hpctrain_pid)"
  kill -s "$1" "$_hpctrain_pid" 2>/dev/null || true
}

# hpctrain_step CMD...: runs CMD (srun, mpirun or hpctrain itself) as the job step; returns its exit code,
# or ends the script after requeueing the job when CMD exits 75.
hpctrain_step() {
  local rc start=$SECONDS
  _hpctrain_terminating=
  export HPCTRAIN_STOPPED="${TMPDIR:-/tmp}/hpctrain-stopped-${SLURM_JOB_ID:-local}-$$"
  rm -f "$HPCTRAIN_STOPPED"
  _hpctrain_say "running: $(_hpctrain_quoted "$@")"
  "$@" &
  _hpctrain_pid=$!
  trap '_hpctrain_forward USR1' USR1
  trap '_hpctrain_terminating=1; _hpctrain_forward TERM' TERM
  trap '_hpctrain_terminating=1; _hpctrain_forward INT' INT
  # A trapped signal cuts `wait` short (status > 128): wait again while the step lives.
  while :; do
    wait "$_hpctrain_pid"
    rc=$?
    if [ "$rc" -le 128 ] || ! kill -0 "$_hpctrain_pid" 2>/dev/null; then break; fi
  done
  wait "$_hpctrain_pid"  # the step's own status, also when the last wait was cut short
  rc=$?
  trap - USR1 TERM INT
  if [ "$rc" = 0 ] && [ -e "$HPCTRAIN_STOPPED" ]; then
    rc=75  # the ranks stopped with a checkpoint (HPCTRAIN_RANK)
  fi
  rm -f "$HPCTRAIN_STOPPED"
  _hpctrain_say "step exited with code $rc after $((SECONDS - start)) s at $(date '+%F %T')"
  if [ "$rc" = 75 ]; then _hpctrain_requeue; fi
  return "$rc"
}

_hpctrain_requeue() {
  local restarts=${SLURM_RESTART_COUNT:-0} max=${HPCTRAIN_MAX_REQUEUES:-10}
  if [ -n "$_hpctrain_terminating" ]; then
    _hpctrain_say "stopped with a checkpoint while Slurm ends the job: not requeued" \
      "(submit the same command again to continue)"
  elif [ -z "${SLURM_JOB_ID:-}" ]; then
    _hpctrain_say "stopped with a checkpoint (not a Slurm job: run it again to continue)"
  elif [ "$restarts" -ge "$max" ]; then
    _hpctrain_say "stopped with a checkpoint; not requeued: requeued $restarts times already" \
      "(HPCTRAIN_MAX_REQUEUES=$max)"
  else
    _hpctrain_say "stopped with a checkpoint: requeueing job $SLURM_JOB_ID (restart $((restarts + 1)))," \
      "it continues with --resume"
    if scontrol requeue "$SLURM_JOB_ID"; then
      trap '' TERM  # Slurm ends this run of the job now
      exit 0
    fi
    _hpctrain_say "scontrol requeue failed: submit the same command again to continue"
  fi
}
