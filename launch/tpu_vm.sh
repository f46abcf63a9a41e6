#!/usr/bin/env bash
# launch/tpu_vm.sh: one fmjax run on every host of a Cloud TPU VM slice, driven from your machine
# with gcloud: pre-flight compile check (here), create or reuse the slice, ship this checkout to
# every worker and install it, run, stop every worker if one fails, delete on request.
#
#   launch/tpu_vm.sh --name=NAME --zone=ZONE --accelerator_type=TYPE [options] -- ARGS...
#   launch/tpu_vm.sh --delete --name=NAME --zone=ZONE [--project=P] [--dry_run]
#
#   --name=NAME              the TPU VM (slice) to create or use
#   --zone=ZONE              its zone, e.g. us-central2-b
#   --accelerator_type=TYPE  v4-32, v5litepod-16, v5p-64, v6e-32, ...; also the pre-flight --topology
#   --version=V              TPU software version (default by generation: v6e v2-alpha-tpuv6e,
#                            v5p v2-alpha-tpuv5, v5e v2-alpha-tpuv5-lite, older tpu-ubuntu2204-base)
#   --project=P              Google Cloud project (default: gcloud's configured project)
#   --spot                   create a Spot slice (cheaper; can be preempted, see --recreate)
#   --reuse                  use the existing slice NAME, never create one
#   --recreate               a slice found PREEMPTED or TERMINATED is deleted and created again
#   --repo=GIT_URL[@REF]     workers clone GIT_URL (at tag/commit/branch REF, no '/' in REF)
#                            instead of receiving this checkout (tracked + untracked, not ignored)
#   --module=M               python -m M on every worker (default fmjax.train; fmjax.finetune works)
#   --env=NAME=VALUE         set in the environment of every worker's process (repeatable)
#   --skip_preflight         skip `python -m fmjax.preflight` (run here before any gcloud call)
#   --delete_after           delete the slice when the run ends (success, failure or Ctrl-C)
#   --delete                 only delete the slice NAME, then exit
#   --dry_run                print every command in order, one per line; run nothing
#   ARGS                     fmjax flags for every worker, unchanged: --config=FILE (required),
#                            --workdir=gs://BUCKET/RUN (required on multi-host slices), overrides
#
# Run it from the repository root: ARGS' relative paths (configs/...) mean the same here and on
# the workers (~/fmjax). Each worker's output lines are prefixed [wI] (its worker number). If a
# worker fails, every worker's process is stopped (pkill -TERM, then -KILL after FMJAX_KILL_GRACE
# seconds, default 10) and the launcher exits with the failed worker's status. Ctrl-C / SIGTERM
# sends SIGTERM to every worker's process: fmjax saves a checkpoint and exits 0. Re-running the
# same command with the same --workdir resumes from the latest checkpoint there.
# Environment: PYTHON (default python3) runs the pre-flight check; GCLOUD (default gcloud);
# REMOTE_PYTHON (default python3) on the workers.
#
# Example (4 hosts of v4 chips):
#   launch/tpu_vm.sh --name=fmjax-v4 --zone=us-central2-b --accelerator_type=v4-32 -- \
#       --config=configs/default.py --workdir=gs://MY_BUCKET/runs/default
set -euo pipefail

usage() { sed -n '2,40p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
die() { echo "tpu_vm.sh: $*" >&2; exit 2; }

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"  # relative paths in ARGS mean the same here and in ~/fmjax on the workers

NAME="" ZONE="" ACCEL="" VERSION="" PROJECT="" SPOT=0 REUSE=0 RECREATE=0 REPO=""
MODULE=fmjax.train SKIP_PREFLIGHT=0 DELETE_AFTER=0 DELETE_ONLY=0 DRY_RUN=0
ENVS=()
KNOWN="name zone accelerator_type version project spot reuse recreate repo module env skip_preflight delete_after delete dry_run"
while [ $# -gt 0 ]; do
  case "$1" in
    --name=*) NAME="${1#*=}" ;;
    --zone=*) ZONE="${1#*=}" ;;
    --accelerator_type=*) ACCEL="${1#*=}" ;;
    --version=*) VERSION="${1#*=}" ;;
    --project=*) PROJECT="${1#*=}" ;;
    --spot) SPOT=1 ;;
    --reuse) REUSE=1 ;;
    --recreate) RECREATE=1 ;;
    --repo=*) REPO="${1#*=}" ;;
    --module=*) MODULE="${1#*=}" ;;
    --env=*=*) ENVS+=("${1#*=}") ;;
    --env=*) die "--env needs NAME=VALUE, got '$1'" ;;
    --skip_preflight) SKIP_PREFLIGHT=1 ;;
    --delete_after) DELETE_AFTER=1 ;;
    --delete) DELETE_ONLY=1 ;;
    --dry_run) DRY_RUN=1 ;;
    --) shift; break ;;
    -h|--help) usage ;;
    *) flag="${1%%=*}"; flag="${flag#--}"; hint=""
       case "$flag: $KNOWN " in *-*:*" ${flag//-/_} "*) hint=" (did you mean --${flag//-/_}? launcher options use underscores)" ;; esac
       die "unknown option '$1'$hint. Launcher options go before --, fmjax's after it; see launch/tpu_vm.sh --help" ;;
  esac
  shift
done
ARGS=("$@")

[ -n "$NAME" ] || die "--name=NAME is required (the TPU VM slice to create or use)"
[ -n "$ZONE" ] || die "--zone=ZONE is required (e.g. --zone=us-central2-b)"
GCLOUD="${GCLOUD:-gcloud}"
PYTHON="${PYTHON:-$(command -v python3 || echo python3)}"
REMOTE_PYTHON="${REMOTE_PYTHON:-python3}"
GRACE="${FMJAX_KILL_GRACE:-10}"
WHERE=("--zone=$ZONE")
[ -n "$PROJECT" ] && WHERE+=("--project=$PROJECT")
TPU=("$GCLOUD" compute tpus tpu-vm)

# quote WORD: the word as the shell reads it back (single quotes only where needed). Used for the
# printed commands and for the command line sent to the workers.
quote() {
  case "$1" in
    '') printf "''" ;;
    *[!A-Za-z0-9_./:=@%+,-]*) printf "'%s'" "${1//\'/\'\\\'\'}" ;;
    *) printf '%s' "$1" ;;
  esac
}
show() {  # one command, one line (--flag='value' rather than '--flag=value')
  local sep="" w
  for w in "$@"; do
    printf '%s' "$sep"; sep=" "
    case "$w" in
      --*=*) case "${w%%=*}" in *[!A-Za-z0-9_.-]*) quote "$w" ;; *) printf '%s=' "${w%%=*}"; quote "${w#*=}" ;; esac ;;
      *) quote "$w" ;;
    esac
  done
}

# step NOTE CMD...: run CMD, or with --dry_run print it (NOTE, if any, as a trailing comment).
step() {
  local note="$1"; shift
  if [ "$DRY_RUN" = 1 ]; then
    show "$@"; [ -z "$note" ] || printf '  # %s' "$note"; printf '\n'
    return 0
  fi
  echo "tpu_vm.sh: $(show "$@")" >&2
  "$@"
}

delete_slice() {  # NOTE
  step "$1" "${TPU[@]}" delete "$NAME" "${WHERE[@]}" --quiet
}

if [ "$DELETE_ONLY" = 1 ]; then
  delete_slice ""
  exit 0
fi

# ---- check the request before anything runs ------------------------------------------------
[ -n "$ACCEL" ] || die "--accelerator_type=TYPE is required (e.g. v4-32, v5litepod-16, v6e-32)"

# Hosts in a slice: v2/v3/v4/v5p names count TensorCores (8 per host), v5e/v6e names count chips
# (up to 8 on one host, then 4 per host); 0 = a name this script does not know.
hosts_of() {
  local n="${1##*-}"
  case "$n" in ''|*[!0-9]*) echo 0; return ;; esac
  if [ "$n" -le 8 ]; then echo 1; return; fi
  case "$1" in
    v5litepod-*|v5e-*|v6e-*) echo $((n / 4)) ;;
    *) echo $((n / 8)) ;;
  esac
}
HOSTS="$(hosts_of "$ACCEL")"

if [ -z "$VERSION" ]; then
  case "$ACCEL" in
    v6e-*) VERSION=v2-alpha-tpuv6e ;;
    v5p-*) VERSION=v2-alpha-tpuv5 ;;
    v5litepod-*|v5e-*) VERSION=v2-alpha-tpuv5-lite ;;
    v2-*|v3-*|v4-*) VERSION=tpu-ubuntu2204-base ;;
    *) die "no default --version for --accelerator_type=$ACCEL; pass --version=RUNTIME (see https://cloud.google.com/tpu/docs/runtimes)" ;;
  esac
fi

CONFIG="" WORKDIR="" OVERRIDES=()
for a in ${ARGS[@]+"${ARGS[@]}"}; do
  case "$a" in
    --config=*) CONFIG="${a#*=}" ;;
    --config.*|--noconfig.*) OVERRIDES+=("$a") ;;
    --workdir=*) WORKDIR="${a#*=}" ;;
    --config|--workdir) die "write '$a=VALUE' (one word) after --, so the launcher can read it" ;;
  esac
done
EXAMPLE="-- --config=configs/default.py --workdir=gs://BUCKET/runs/NAME"
[ -n "$CONFIG" ] || die "no --config=FILE after -- : every worker and the pre-flight check need it, e.g. $EXAMPLE"
[ -n "$WORKDIR" ] || die "no --workdir=DIR after -- : e.g. $EXAMPLE (a re-run with the same --workdir resumes)"
if [ "$HOSTS" != 1 ] && [ "${WORKDIR#gs://}" = "$WORKDIR" ]; then
  what="$ACCEL has $HOSTS hosts"; [ "$HOSTS" = 0 ] && what="$ACCEL may have several hosts"
  die "--workdir=$WORKDIR is not on Cloud Storage, but $what that must all write the same checkpoints: use --workdir=gs://BUCKET/PATH (a bucket in the slice's region)"
fi

# ---- what runs on the workers --------------------------------------------------------------
# fmjax initialises jax.distributed by itself where the environment names the cluster; a TPU VM
# slice is found through the metadata server instead, which --distributed=on asks JAX to do.
# Launcher flags go first so that the same flags in ARGS win (absl keeps the last value).
TRAIN=("$REMOTE_PYTHON" -m "$MODULE")
case "$MODULE" in
  fmjax.train|fmjax.finetune)
    TRAIN+=(--expect_accelerator=tpu)
    [ "$HOSTS" = 1 ] || TRAIN+=(--distributed=on) ;;
esac
TRAIN+=(${ARGS[@]+"${ARGS[@]}"})
# Each worker prefixes its lines with [wI], I = its worker number from the metadata server.
# shellcheck disable=SC2016  # (expanded on the worker, not here)
WORKER_ID='w=$(curl -sf -H Metadata-Flavor:Google http://metadata.google.internal/computeMetadata/v1/instance/attributes/agent-worker-number || hostname)'
RUN_REMOTE="cd fmjax && $WORKER_ID && set -o pipefail && $(show env PYTHONUNBUFFERED=1 ${ENVS[@]+"${ENVS[@]}"} "${TRAIN[@]}") 2>&1 | sed -u \"s/^/[w\$w] /\""
PATTERN="[-]m $MODULE"  # matches the process's command line, not the shell that runs pkill
STOP_REMOTE="pkill -TERM -f $(quote "$PATTERN"); sleep $GRACE; pkill -KILL -f $(quote "$PATTERN"); true"
SIGNAL_REMOTE="pkill -TERM -f $(quote "$PATTERN"); true"
INSTALL="$REMOTE_PYTHON -m pip install --quiet -e '.[tpu]'"

# ---- 1. pre-flight: does the train step compile and fit in HBM on this slice? -----------------
if [ "$SKIP_PREFLIGHT" = 0 ]; then
  if ! step "" "$PYTHON" -m fmjax.preflight "--config=$CONFIG" "--topology=$ACCEL" \
      ${OVERRIDES[@]+"${OVERRIDES[@]}"}; then
    echo "tpu_vm.sh: pre-flight check failed: --config=$CONFIG (with its overrides) does not" \
         "compile or fit in HBM on $ACCEL (its output above says why). No slice was created." \
         "Fix the config (smaller batch, more fsdp, remat), or pass --skip_preflight to launch anyway." >&2
    exit 1
  fi
fi

WORK="/tmp/tpu_vm.XXXXXX"
if [ "$DRY_RUN" = 0 ]; then
  WORK="$(mktemp -d "${TMPDIR:-/tmp}/tpu_vm.XXXXXX")"
  trap 'rm -rf "$WORK"' EXIT
fi

finish() {  # STATUS: delete the slice if asked, then exit
  if [ "$DELETE_AFTER" = 1 ]; then
    delete_slice "--delete_after" || echo "tpu_vm.sh: could not delete $NAME; delete it with: launch/tpu_vm.sh --delete --name=$NAME --zone=$ZONE" >&2
  fi
  exit "$1"
}

# ---- 2. the slice ------------------------------------------------------------------------------
DESCRIBE=("${TPU[@]}" describe "$NAME" "${WHERE[@]}" --format='value(state)')
CREATE=("${TPU[@]}" create "$NAME" "${WHERE[@]}" "--accelerator-type=$ACCEL" "--version=$VERSION")
[ "$SPOT" = 1 ] && CREATE+=(--spot)
if [ "$DRY_RUN" = 1 ]; then
  step "" "${DESCRIBE[@]}"
  if [ "$REUSE" = 0 ]; then
    [ "$RECREATE" = 0 ] || delete_slice "only if the slice is PREEMPTED or TERMINATED (--recreate)"
    step "only if describe finds no slice $NAME" "${CREATE[@]}"
  fi
else
  echo "tpu_vm.sh: $(show "${DESCRIBE[@]}")" >&2
  if STATE="$("${DESCRIBE[@]}" 2>"$WORK/describe.err")"; then
    case "$STATE" in
      READY) echo "tpu_vm.sh: using the existing slice $NAME (READY)" >&2 ;;
      PREEMPTED|TERMINATED)
        [ "$RECREATE" = 1 ] || die "slice $NAME is $STATE (a Spot/preemptible slice was reclaimed): pass --recreate to delete and create it again (the run resumes from the last checkpoint in --workdir), or --delete"
        delete_slice ""
        step "" "${CREATE[@]}" ;;
      *) die "slice $NAME is in state '$STATE', not READY: wait and re-run (gcloud compute tpus tpu-vm describe $NAME --zone=$ZONE), or --delete it" ;;
    esac
  elif grep -qi "not.found" "$WORK/describe.err"; then
    [ "$REUSE" = 0 ] || die "no slice $NAME in $ZONE, and --reuse never creates one: drop --reuse"
    step "" "${CREATE[@]}" || { rc=$?; echo "tpu_vm.sh: could not create $NAME (status $rc); see gcloud's message above" >&2; exit "$rc"; }
  else
    cat "$WORK/describe.err" >&2
    echo "tpu_vm.sh: gcloud could not describe $NAME (see above: login? project? --zone=$ZONE?)" >&2
    exit 1
  fi
fi

# ---- 3. install fmjax on every worker ------------------------------------------------------------
if [ -n "$REPO" ]; then
  URL="$REPO" REF=""
  tail="${REPO##*@}"
  case "$tail" in *[:/]*|"$REPO") ;; *) URL="${REPO%@*}"; REF="$tail" ;; esac
  FETCH="rm -rf fmjax && git clone --quiet $(quote "$URL") fmjax && cd fmjax"
  [ -z "$REF" ] || FETCH="$FETCH && git checkout --quiet $(quote "$REF")"
  step "" "${TPU[@]}" ssh "$NAME" "${WHERE[@]}" --worker=all "--command=$FETCH && $INSTALL" \
    || { rc=$?; echo "tpu_vm.sh: installing fmjax on the workers failed (status $rc)" >&2; finish "$rc"; }
else
  # This checkout as it is on disk (tracked and untracked files, not ignored ones), so what runs
  # is what the pre-flight check compiled.
  TARBALL="$WORK/fmjax.tar.gz"
  PACK="git -C $(quote "$ROOT") ls-files -z --cached --others --exclude-standard | tar -C $(quote "$ROOT") --null -T - -czf $(quote "$TARBALL")"
  if [ "$DRY_RUN" = 1 ]; then
    echo "$PACK"
  else
    echo "tpu_vm.sh: packing $ROOT" >&2
    bash -o pipefail -c "$PACK" || die "could not pack $ROOT (a tracked file deleted but not 'git rm'-ed? see git status), or use --repo=GIT_URL"
  fi
  step "" "${TPU[@]}" scp "$TARBALL" "$NAME:fmjax.tar.gz" "${WHERE[@]}" --worker=all \
    || { rc=$?; echo "tpu_vm.sh: copying the checkout to the workers failed (status $rc)" >&2; finish "$rc"; }
  step "" "${TPU[@]}" ssh "$NAME" "${WHERE[@]}" --worker=all \
      "--command=rm -rf fmjax && mkdir fmjax && tar -xzf fmjax.tar.gz -C fmjax && cd fmjax && $INSTALL" \
    || { rc=$?; echo "tpu_vm.sh: installing fmjax on the workers failed (status $rc)" >&2; finish "$rc"; }
fi

# ---- 4. run on every worker ------------------------------------------------------------------------
RUN=("${TPU[@]}" ssh "$NAME" "${WHERE[@]}" --worker=all "--command=$RUN_REMOTE")
STOP=("${TPU[@]}" ssh "$NAME" "${WHERE[@]}" --worker=all "--command=$STOP_REMOTE")
if [ "$DRY_RUN" = 1 ]; then
  step "" "${RUN[@]}"
  step "only if a worker fails: stop the others" "${STOP[@]}"
  [ "$DELETE_AFTER" = 0 ] || delete_slice "--delete_after"
  exit 0
fi

# gcloud runs the command on all workers at once and only returns when every one has ended, but
# it prints '##### Command execution on worker N failed with exit status S' as soon as one fails:
# that line triggers the stop, instead of waiting for the others to time out in a collective.
FAILED="" STOPPED=0 INTERRUPTED=0
stop_workers() {
  [ "$STOPPED" = 0 ] || return 0
  STOPPED=1
  echo "tpu_vm.sh: stopping fmjax on every worker of $NAME" >&2
  "${STOP[@]}" >&2 || echo "tpu_vm.sh: the stop command failed; check the workers with: gcloud compute tpus tpu-vm ssh $NAME --zone=$ZONE --worker=all --command='pgrep -af $MODULE'" >&2
}
# shellcheck disable=SC2317  # (called from the traps below)
interrupt() {
  [ "$INTERRUPTED" = 0 ] || return 0
  INTERRUPTED=1
  echo "tpu_vm.sh: $1 received: sending SIGTERM to fmjax on every worker (it saves a checkpoint and exits)" >&2
  "${TPU[@]}" ssh "$NAME" "${WHERE[@]}" --worker=all "--command=$SIGNAL_REMOTE" >&2 || true
}
trap 'interrupt SIGINT' INT
trap 'interrupt SIGTERM' TERM

echo "tpu_vm.sh: $(show "${RUN[@]:0:7}") ... ($MODULE on $NAME, every worker)" >&2
mkfifo "$WORK/run.out"
"${RUN[@]}" > "$WORK/run.out" 2>&1 &
RUN_PID=$!
exec 3< "$WORK/run.out"
while :; do
  if IFS= read -r line <&3; then
    printf '%s\n' "$line"
    case "$line" in
      "##### Command execution on worker "*" failed with exit status "*)
        if [ -z "$FAILED" ] && [ "$INTERRUPTED" = 0 ]; then
          FAILED="${line#*exit status }"; FAILED="${FAILED%%.*}"
          worker="${line#*on worker }"; worker="${worker%% *}"
          echo "tpu_vm.sh: worker $worker failed with status $FAILED; stopping the others" >&2
          stop_workers
        fi ;;
    esac
  else
    rc=$?
    [ "$rc" -gt 128 ] && continue  # a trapped signal interrupted the read
    [ -n "$line" ] && printf '%s\n' "$line"
    break
  fi
done
exec 3<&-
STATUS=0
while :; do  # (a trapped signal also ends `wait`: wait again while gcloud still runs)
  if wait "$RUN_PID"; then STATUS=0; break; else STATUS=$?; fi
  kill -0 "$RUN_PID" 2>/dev/null || break
done
if [ "$INTERRUPTED" = 1 ]; then
  echo "tpu_vm.sh: stopped on request; re-run the same command to resume from the last checkpoint in $WORKDIR" >&2
  finish 130
fi
if [ "$STATUS" -ne 0 ] || [ -n "$FAILED" ]; then
  case "$FAILED" in ''|*[!0-9]*) FAILED="$STATUS" ;; esac
  [ "$FAILED" -ne 0 ] || FAILED=1
  echo "tpu_vm.sh: the run failed with status $FAILED" >&2
  stop_workers
  finish "$FAILED"
fi
echo "tpu_vm.sh: the run finished on every worker of $NAME" >&2
finish 0
