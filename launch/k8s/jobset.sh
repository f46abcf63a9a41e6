#!/usr/bin/env bash
# launch/k8s/jobset.sh: an fmjax run as a Kubernetes JobSet on GKE TPU or GPU node pools. Renders
# launch/k8s/jobset-tpu.yaml or jobset-gpu.yaml to stdout, or applies it with kubectl.
#
#   launch/k8s/jobset.sh --platform=tpu --name=NAME --image=IMAGE --workdir=gs://BUCKET/RUN \
#       --accelerator=tpu-v5-lite-podslice --topology=4x4 [--num_slices=S] [options] -- ARGS...
#   launch/k8s/jobset.sh --platform=gpu --name=NAME --image=IMAGE --workdir=gs://BUCKET/RUN \
#       --accelerator=nvidia-h100-80gb --replicas=N [--gpus_per_node=8] [options] -- ARGS...
#
#   --platform=tpu|gpu      which template
#   --name=NAME             the JobSet (lowercase letters, digits and '-'; pods are NAME-...)
#   --image=IMAGE           a container image with fmjax installed (pip install '.[tpu]' / '.[gpu]')
#   --workdir=gs://B/RUN    passed to fmjax as --workdir; pods share no disk, so Cloud Storage
#   --accelerator=A         TPU: the cloud.google.com/gke-tpu-accelerator label (tpu-v4-podslice,
#                           tpu-v5-lite-podslice, tpu-v5p-slice, tpu-v6e-slice); GPU: the
#                           cloud.google.com/gke-accelerator label (nvidia-h100-80gb, ...)
#   --topology=AxB[xC]      TPU: the slice topology (cloud.google.com/gke-tpu-topology)
#   --chips_per_host=K      TPU: chips per host (default 4; a 2-D topology of <= 8 chips is one host)
#   --num_slices=S          TPU: slices (JobSet replicas; default 1), joined over the data-center network
#   --replicas=N            pods: TPU hosts per slice (default: chips / chips_per_host);
#                           GPU nodes (default 1)
#   --gpus_per_node=G       GPU: GPUs per node and pod (default 8)
#   --module=M              python3 -m M (default fmjax.train)
#   --max_restarts=R        JobSet restarts after a failure or preemption (default 3); each resumes
#                           from the latest checkpoint in --workdir
#   --namespace=NS          kubectl's namespace (default: kubectl's current one)
#   --apply                 kubectl apply -f - the manifest (default: print it to stdout)
#   --dry_run               print the kubectl command (a comment) and the manifest; run nothing
#   ARGS                    fmjax flags for every pod: --config=FILE (a path inside the image), overrides
#
# Environment: KUBECTL (default kubectl). To add volumes or environment variables, print the
# manifest to a file, edit it and `kubectl apply -f FILE`.
set -euo pipefail

usage() { sed -n '2,32p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
die() { echo "jobset.sh: $*" >&2; exit 2; }
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

PLATFORM="" NAME="" IMAGE="" WORKDIR="" ACCEL="" TOPOLOGY="" CHIPS_PER_HOST="" SLICES=1
REPLICAS="" GPUS=8 MODULE=fmjax.train MAX_RESTARTS=3 NAMESPACE="" APPLY=0 DRY_RUN=0
while [ $# -gt 0 ]; do
  case "$1" in
    --platform=*) PLATFORM="${1#*=}" ;;
    --name=*) NAME="${1#*=}" ;;
    --image=*) IMAGE="${1#*=}" ;;
    --workdir=*) WORKDIR="${1#*=}" ;;
    --accelerator=*) ACCEL="${1#*=}" ;;
    --topology=*) TOPOLOGY="${1#*=}" ;;
    --chips_per_host=*) CHIPS_PER_HOST="${1#*=}" ;;
    --num_slices=*) SLICES="${1#*=}" ;;
    --replicas=*) REPLICAS="${1#*=}" ;;
    --gpus_per_node=*) GPUS="${1#*=}" ;;
    --module=*) MODULE="${1#*=}" ;;
    --max_restarts=*) MAX_RESTARTS="${1#*=}" ;;
    --namespace=*) NAMESPACE="${1#*=}" ;;
    --apply) APPLY=1 ;;
    --dry_run) DRY_RUN=1 ;;
    --) shift; break ;;
    -h|--help) usage ;;
    *) die "unknown option '$1' (launcher options use underscores and go before --, fmjax's after it; see --help)" ;;
  esac
  shift
done
ARGS=("$@")

number() {  # FLAG VALUE: VALUE must be a whole number >= 1 (or >= 0 for max_restarts)
  case "$2" in ''|*[!0-9]*) die "$1=$2: not a whole number" ;; esac
  [ "$1" = --max_restarts ] || [ "$2" -ge 1 ] || die "$1=$2: must be at least 1"
}
case "$PLATFORM" in
  tpu|gpu) ;;
  '') die "--platform=tpu or --platform=gpu is required (which node pools to run on)" ;;
  *) die "--platform=$PLATFORM: use tpu or gpu" ;;
esac
[ -n "$NAME" ] || die "--name=NAME is required (the JobSet's name)"
case "$NAME" in
  [a-z]*[a-z0-9]|[a-z]) [ "${NAME//[a-z0-9-]/}" = "" ] || die "--name=$NAME: use lowercase letters, digits and '-' (a DNS label)" ;;
  *) die "--name=$NAME: use lowercase letters, digits and '-', starting with a letter (a DNS label)" ;;
esac
[ -n "$IMAGE" ] || die "--image=IMAGE is required: a container image with fmjax installed (pip install '.[$PLATFORM]')"
[ -n "$ACCEL" ] || die "--accelerator=LABEL is required (e.g. $([ "$PLATFORM" = tpu ] && echo tpu-v5-lite-podslice || echo nvidia-h100-80gb))"
number --num_slices "$SLICES"; number --gpus_per_node "$GPUS"; number --max_restarts "$MAX_RESTARTS"
[ -z "$REPLICAS" ] || number --replicas "$REPLICAS"
for a in ${ARGS[@]+"${ARGS[@]}"}; do
  case "$a" in --workdir=*|--workdir) die "give the workdir as the launcher's --workdir=gs://... (before --), not among fmjax's flags" ;; esac
done
[ -n "$WORKDIR" ] || die "--workdir=gs://BUCKET/RUN is required (checkpoints; re-applying the same manifest resumes from it)"

if [ "$PLATFORM" = tpu ]; then
  [ -n "$TOPOLOGY" ] || die "--topology=AxB[xC] is required for TPU (the node pool's slice topology, e.g. 4x4 or 2x2x4)"
  CHIPS=1 DIMS=0
  IFS=x read -r -a SIDES <<< "$TOPOLOGY"
  for n in "${SIDES[@]}"; do
    case "$n" in ''|*[!0-9]*) die "--topology=$TOPOLOGY: write it as AxB or AxBxC (e.g. 4x4, 2x2x4)" ;; esac
    CHIPS=$((CHIPS * n)); DIMS=$((DIMS + 1))
  done
  if [ -z "$CHIPS_PER_HOST" ]; then
    CHIPS_PER_HOST=4
    [ "$DIMS" = 2 ] && [ "$CHIPS" -le 8 ] && CHIPS_PER_HOST="$CHIPS"  # v5e/v6e single-host shapes
  fi
  number --chips_per_host "$CHIPS_PER_HOST"
  [ $((CHIPS % CHIPS_PER_HOST)) = 0 ] || die "--topology=$TOPOLOGY ($CHIPS chips) is not a whole number of hosts of --chips_per_host=$CHIPS_PER_HOST"
  HOSTS="${REPLICAS:-$((CHIPS / CHIPS_PER_HOST))}"
  PODS=$((HOSTS * SLICES))
else
  HOSTS="${REPLICAS:-1}"
  PODS="$HOSTS"
fi
if [ "$PODS" -gt 1 ] && [ "${WORKDIR#gs://}" = "$WORKDIR" ]; then
  die "--workdir=$WORKDIR: the $PODS pods share no disk and all write the same checkpoints: use --workdir=gs://BUCKET/PATH (or render, mount a shared volume in every pod, and edit the path)"
fi

yaml_str() {  # a double-quoted YAML (JSON) string
  local s="$1"
  s="${s//\\/\\\\}"; s="${s//\"/\\\"}"; s="${s//$'\t'/\\t}"; s="${s//$'\n'/\\n}"
  printf '"%s"' "$s"
}
yaml_list() {
  local sep="" w
  printf '['
  for w in "$@"; do printf '%s' "$sep"; yaml_str "$w"; sep=", "; done
  printf ']'
}

# --expect_accelerator first, so the same flag in ARGS wins: a pod whose accelerator runtime
# failed stops with an error instead of training on CPU.
TRAIN_ARGS=("--expect_accelerator=$PLATFORM" ${ARGS[@]+"${ARGS[@]}"} "--workdir=$WORKDIR")
FIELDS=(NAME "$NAME" IMAGE "$(yaml_str "$IMAGE")" ACCELERATOR "$(yaml_str "$ACCEL")"
        COMMAND "$(yaml_list python3 -m "$MODULE")" ARGS "$(yaml_list "${TRAIN_ARGS[@]}")"
        MAX_RESTARTS "$MAX_RESTARTS")
if [ "$PLATFORM" = tpu ]; then
  FIELDS+=(TOPOLOGY "$(yaml_str "$TOPOLOGY")" SLICES "$SLICES" HOSTS "$HOSTS"
           CHIPS_PER_HOST "$CHIPS_PER_HOST")
else
  FIELDS+=(NODES "$HOSTS" GPUS "$GPUS" PORT 1234 DEVICE_IDS "$(seq -s, 0 $((GPUS - 1)))")
fi

render() {
  local out i
  out="$(cat "$HERE/jobset-$PLATFORM.yaml")"
  for ((i = 0; i < ${#FIELDS[@]}; i += 2)); do
    out="${out//"{{${FIELDS[i]}}}"/"${FIELDS[i + 1]}"}"
  done
  case "$out" in *"{{"*) die "a placeholder in jobset-$PLATFORM.yaml was left unfilled (a bug in this script)" ;; esac
  printf '%s\n' "$out"
}

KUBECTL="${KUBECTL:-kubectl}"
APPLY_CMD=("$KUBECTL")
[ -z "$NAMESPACE" ] || APPLY_CMD+=("--namespace=$NAMESPACE")
APPLY_CMD+=(apply -f -)
MANIFEST="$(render)"
if [ "$DRY_RUN" = 1 ]; then
  echo "# ${APPLY_CMD[*]}   (with the manifest below on its standard input)"
  printf '%s\n' "$MANIFEST"
elif [ "$APPLY" = 1 ]; then
  printf '%s\n' "$MANIFEST" | "${APPLY_CMD[@]}"
  echo "jobset.sh: applied JobSet $NAME ($PODS pods). Follow it with: $KUBECTL get pods -l jobset.sigs.k8s.io/jobset-name=$NAME; $KUBECTL logs -f -l jobset.sigs.k8s.io/jobset-name=$NAME,jobset.sigs.k8s.io/job-index=0,batch.kubernetes.io/job-completion-index=0 (pod 0 prints the run's log). Delete it with: $KUBECTL delete jobset $NAME" >&2
else
  printf '%s\n' "$MANIFEST"
fi
