#!/usr/bin/env bash
# launch/local.sh: N processes of one fmjax run on this machine, on JAX's multi-controller
# runtime (jax.distributed, gloo collectives on CPU), for tests and for reproducing multi-host
# bugs on a laptop.
#
#   launch/local.sh N [--devices_per_process=K] [--module=fmjax.train] [--dry_run] -- ARGS...
#
#   N                      processes to start (ids 0..N-1)
#   --devices_per_process  CPU devices each process sees (default 4), through
#                          XLA_FLAGS=--xla_force_host_platform_device_count=K (after any
#                          XLA_FLAGS of the caller's, which every process keeps), JAX_PLATFORMS=cpu
#   --module               the entry point, `python -m MODULE ARGS...` (default fmjax.train;
#                          fmjax.finetune also works)
#   --dry_run              print every command with its environment, run nothing, exit 0
#   ARGS                   passed unchanged to every process (the same --config, --workdir, ...)
#
# The coordinator is process 0 on 127.0.0.1 at a free port; each process gets
# FMJAX_COORDINATOR_ADDRESS, FMJAX_NUM_PROCESSES and FMJAX_PROCESS_ID (read by
# fmjax/distributed.py). Output lines are prefixed with [pI]. If a process fails, the others
# are stopped (SIGTERM, then SIGKILL after FMJAX_KILL_GRACE seconds, default 10) and the
# launcher exits with the failed process's status. SIGTERM / SIGINT to the launcher is
# forwarded once to every process (fmjax then saves a checkpoint and exits 0: preemption).
# Environment: PYTHON (default: python3, or python) runs the module.
#
# Example (2 processes x 4 devices = mesh data=2, fsdp=2, tensor=2):
#   launch/local.sh 2 -- --config=configs/default.py --workdir=/tmp/run \
#       --config.mesh.data=2 --config.mesh.fsdp=2 --config.mesh.tensor=2
set -u

usage() { sed -n '2,24p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }

[ $# -ge 1 ] || usage
NUM="$1"; shift
case "$NUM" in ''|*[!0-9]*) echo "local.sh: N must be a positive integer, got '$NUM'" >&2; usage;; esac
[ "$NUM" -ge 1 ] || usage
DEVICES=4
MODULE=fmjax.train
DRY_RUN=0
while [ $# -gt 0 ]; do
  case "$1" in
    --devices_per_process=*) DEVICES="${1#*=}" ;;
    --module=*) MODULE="${1#*=}" ;;
    --dry_run) DRY_RUN=1 ;;
    --) shift; break ;;
    -h|--help) usage ;;
    *) echo "local.sh: unknown option '$1' (launcher options go before --, fmjax's after)" >&2
       usage ;;
  esac
  shift
done
case "$DEVICES" in ''|*[!0-9]*|0) echo "local.sh: --devices_per_process must be >= 1" >&2; exit 2;; esac
PYTHON="${PYTHON:-$(command -v python3 || command -v python)}"
GRACE="${FMJAX_KILL_GRACE:-10}"

if [ "$DRY_RUN" = 1 ]; then
  PORT=PORT  # a free port is picked at launch
else
  PORT="$("$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')" \
    || { echo "local.sh: could not pick a free port with $PYTHON" >&2; exit 1; }
fi

env_of() {  # the environment of process $1: VAR=value words into the array ENV_OF
  ENV_OF=(JAX_PLATFORMS=cpu
          "XLA_FLAGS=${XLA_FLAGS:+$XLA_FLAGS }--xla_force_host_platform_device_count=$DEVICES"
          "FMJAX_COORDINATOR_ADDRESS=127.0.0.1:$PORT" "FMJAX_NUM_PROCESSES=$NUM"
          "FMJAX_PROCESS_ID=$1")
}

if [ "$DRY_RUN" = 1 ]; then
  i=0
  while [ "$i" -lt "$NUM" ]; do
    env_of "$i"
    printf '[p%s] env' "$i"
    printf ' %q' "${ENV_OF[@]}" "$PYTHON"
    printf ' -m %q' "$MODULE"
    [ $# -gt 0 ] && printf ' %q' "$@"
    printf '\n'
    i=$((i + 1))
  done
  exit 0
fi

prefix() { while IFS= read -r line || [ -n "$line" ]; do printf '[p%s] %s\n' "$1" "$line"; done; }

set -m  # each process in its own process group: a terminal's Ctrl-C reaches only us, once
PIDS=()
i=0
while [ "$i" -lt "$NUM" ]; do
  env_of "$i"
  env "${ENV_OF[@]}" "$PYTHON" -m "$MODULE" "$@" > >(prefix "$i") 2>&1 &
  PIDS+=("$!")
  i=$((i + 1))
done
set +m  # (no job-control notices from here on; the process groups stay)
echo "local.sh: started $NUM processes of $MODULE (pids ${PIDS[*]}), coordinator 127.0.0.1:$PORT, $DEVICES CPU devices each" >&2

alive() { kill -0 "$1" 2>/dev/null; }
signal_all() { for p in "${PIDS[@]}"; do alive "$p" && kill "-$1" "$p" 2>/dev/null; done; }
forward() {
  echo "local.sh: $1 received, forwarding to all processes" >&2
  signal_all "$1"
}
trap 'forward TERM' TERM
trap 'forward INT' INT

STATUS=0
DONE=()
remaining=$NUM
while [ "$remaining" -gt 0 ]; do
  for idx in "${!PIDS[@]}"; do
    [ -z "${DONE[$idx]:-}" ] || continue
    p="${PIDS[$idx]}"
    alive "$p" && continue
    wait "$p"; rc=$?
    DONE[$idx]=1
    remaining=$((remaining - 1))
    if [ "$rc" -ne 0 ] && [ "$STATUS" -eq 0 ]; then
      STATUS=$rc
      echo "local.sh: process $idx (pid $p) failed with status $rc; stopping the others" >&2
      signal_all TERM
      deadline=$(( $(date +%s) + GRACE ))
      while [ "$(date +%s)" -lt "$deadline" ]; do
        any=0; for q in "${PIDS[@]}"; do alive "$q" && any=1; done
        [ "$any" = 0 ] && break
        sleep 0.2
      done
      signal_all KILL
    fi
  done
  [ "$remaining" -gt 0 ] && sleep 0.2
done
wait 2>/dev/null  # the output prefixers
exit "$STATUS"
