"""The multi-host launchers (launch/tpu_vm.sh, launch/slurm.sbatch, launch/k8s/jobset.sh):
their dry runs print exactly the commands (and manifests) they would run, bad input stops with
a message naming the flag and the fix, and tpu_vm.sh runs for real against a fake `gcloud` and a
fake `python3` on PATH: a failing pre-flight check stops it before any gcloud call, and a
failing worker stops every worker and sets the launcher's exit status. No network, gcloud,
kubectl or SLURM needed (launch/local.sh is tested in tests/e2e/test_multiprocess.py)."""
import os
import shlex
import signal
import subprocess
import tarfile
import textwrap
import time

import pytest
import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TPU_VM = os.path.join(ROOT, "launch", "tpu_vm.sh")
SLURM = os.path.join(ROOT, "launch", "slurm.sbatch")
JOBSET = os.path.join(ROOT, "launch", "k8s", "jobset.sh")
SPACED = "--config.train.name=a b 'c'"  # a value with spaces and quotes must arrive intact
TRAIN_ARGS = ["--config=configs/default.py", "--workdir=gs://bucket/runs/one",
              "--config.train.steps=10", SPACED]


def clean_env(**extra):
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("SLURM_", "FMJAX_", "JAX_")) and k not in (
               "PYTHON", "GCLOUD", "KUBECTL", "WORKDIR", "DRY_RUN", "PROCESS_PER")}
    env.update(extra)
    return env


def run(command, env=None, timeout=60):
    return subprocess.run(["bash", *command], cwd=ROOT, env=env or clean_env(),
                          capture_output=True, text=True, timeout=timeout)


def commands(stdout):
    """Each printed line as the shell would split it (a trailing '# note' dropped)."""
    return [shlex.split(line, comments=True) for line in stdout.strip().splitlines()]


def remote_command(command):
    """The shell command line a `gcloud ... ssh --command=...` runs on the workers."""
    (value,) = [w.split("=", 1)[1] for w in command if w.startswith("--command=")]
    return value


def remote_words(command):
    return shlex.split(remote_command(command))


# ---- tpu_vm.sh: dry run -----------------------------------------------------------------------

def test_tpu_vm_dry_run_prints_every_command_in_order():
    result = run([TPU_VM, "--name=fm1", "--zone=us-central2-b", "--accelerator_type=v4-32",
                  "--project=proj", "--spot", "--delete_after", "--dry_run", "--", *TRAIN_ARGS],
                 env=clean_env(PYTHON="/opt/py/bin/python", GCLOUD="/opt/gcloud"))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    cmds = commands(result.stdout)
    where = ["--zone=us-central2-b", "--project=proj"]
    tpu = ["/opt/gcloud", "compute", "tpus", "tpu-vm"]
    assert len(cmds) == 9, result.stdout
    # 1. the pre-flight compile check, here, before any gcloud call: config + overrides only
    assert cmds[0] == ["/opt/py/bin/python", "-m", "fmjax.preflight",
                       "--config=configs/default.py", "--topology=v4-32",
                       "--config.train.steps=10", SPACED]
    # 2. describe, then create only if it does not exist
    assert cmds[1] == [*tpu, "describe", "fm1", *where, "--format=value(state)"]
    assert cmds[2] == [*tpu, "create", "fm1", *where, "--accelerator-type=v4-32",
                       "--version=tpu-ubuntu2204-base", "--spot"]
    assert lines[2].endswith("# only if describe finds no slice fm1")
    # 3. this checkout, packed, copied to every worker and installed there
    assert "git -C" in lines[3] and "ls-files" in lines[3] and "| tar" in lines[3]
    tarball = cmds[3][-1]
    assert cmds[4] == [*tpu, "scp", tarball, "fm1:fmjax.tar.gz", *where, "--worker=all"]
    assert cmds[5][:6] == [*tpu, "ssh", "fm1"] and "--worker=all" in cmds[5]
    assert remote_words(cmds[5]) == [
        "rm", "-rf", "fmjax", "&&", "mkdir", "fmjax", "&&", "tar", "-xzf", "fmjax.tar.gz", "-C",
        "fmjax", "&&", "cd", "fmjax", "&&", "python3", "-m", "pip", "install", "--quiet", "-e",
        ".[tpu]"]
    # 4. the run on every worker: the same flags, quoting intact, after the launcher's own
    assert cmds[6][:6] == [*tpu, "ssh", "fm1"] and cmds[6][6:9] == [*where, "--worker=all"]
    words = remote_words(cmds[6])
    start = words.index("python3")
    assert words[start:start + 5 + len(TRAIN_ARGS)] == [
        "python3", "-m", "fmjax.train", "--expect_accelerator=tpu", "--distributed=on",
        *TRAIN_ARGS]
    assert words[start - 2:start] == ["env", "PYTHONUNBUFFERED=1"]
    # each worker's lines prefixed with its number ($w, from the metadata server)
    assert words[-5:] == ["2>&1", "|", "sed", "-u", "s/^/[w$w] /"]
    # 5. stop every worker if one fails; 6. delete (--delete_after)
    # ('[-]m' matches fmjax's command line but not the shell running pkill)
    assert remote_command(cmds[7]) == ("pkill -TERM -f '[-]m fmjax.train'; sleep 10; "
                                       "pkill -KILL -f '[-]m fmjax.train'; true")
    assert "--worker=all" in cmds[7] and lines[7].endswith("# only if a worker fails: stop the others")
    assert cmds[8] == [*tpu, "delete", "fm1", *where, "--quiet"]


def test_tpu_vm_dry_run_single_host_reuse_and_repo():
    result = run([TPU_VM, "--name=small", "--zone=z1", "--accelerator_type=v5litepod-8",
                  "--reuse", "--repo=https://example.com/fmjax.git@v0.1", "--skip_preflight",
                  "--module=fmjax.finetune", "--env=LIBTPU_INIT_ARGS=--xla_x=1 --xla_y=2",
                  "--dry_run", "--", "--config=configs/finetune/default.py",
                  "--workdir=/home/me/ft"])
    assert result.returncode == 0, result.stderr
    cmds = commands(result.stdout)
    assert [c[4] for c in cmds] == ["describe", "ssh", "ssh", "ssh"]  # no preflight/create/scp
    clone = remote_words(cmds[1])
    assert clone[:13] == ["rm", "-rf", "fmjax", "&&", "git", "clone", "--quiet",
                          "https://example.com/fmjax.git", "fmjax", "&&", "cd", "fmjax", "&&"]
    assert clone[13:17] == ["git", "checkout", "--quiet", "v0.1"]
    words = remote_words(cmds[2])
    assert "LIBTPU_INIT_ARGS=--xla_x=1 --xla_y=2" in words
    start = words.index("python3")
    # one host: no --distributed=on; a local workdir is fine there
    assert words[start:start + 6] == ["python3", "-m", "fmjax.finetune",
                                      "--expect_accelerator=tpu",
                                      "--config=configs/finetune/default.py",
                                      "--workdir=/home/me/ft"]
    assert remote_command(cmds[3]).startswith("pkill -TERM -f '[-]m fmjax.finetune';")


@pytest.mark.parametrize("args, fragments", [
    (["--accelerator_type=v4-32", "--", "--workdir=gs://b/r"],
     ["no --config=FILE after --", "--config=configs/default.py"]),
    (["--accelerator_type=v4-32", "--", "--config=configs/default.py", "--workdir=/tmp/r"],
     ["--workdir=/tmp/r is not on Cloud Storage", "v4-32 has 4 hosts", "--workdir=gs://BUCKET/PATH"]),
    (["--accelerator-type=v4-32", "--", "--config=configs/default.py"],
     ["unknown option '--accelerator-type=v4-32'", "did you mean --accelerator_type?"]),
    (["--", "--config=configs/default.py", "--workdir=gs://b/r"],
     ["--accelerator_type=TYPE is required"]),
])
def test_tpu_vm_bad_input_names_the_flag_and_the_fix(tmp_path, args, fragments):
    log = tmp_path / "gcloud.log"
    fake = tmp_path / "gcloud"
    fake.write_text(f"#!/bin/sh\necho \"$@\" >> {log}\n")
    fake.chmod(0o755)
    result = run([TPU_VM, "--name=t", "--zone=z", *args], env=clean_env(GCLOUD=str(fake)))
    assert result.returncode == 2, result.stdout + result.stderr
    for fragment in fragments:
        assert fragment in result.stderr
    assert not log.exists()


# ---- tpu_vm.sh: a real run against fakes -------------------------------------------------------

FAKE_PYTHON = """#!/bin/sh
echo "$@" >> "$FAKE_DIR/python.log"
echo "pre-flight: $FAKE_PREFLIGHT"
[ "$FAKE_PREFLIGHT" = ok ]
"""

# gcloud as tpu_vm.sh sees it: NOT_FOUND on describe; the run prints a line per worker, then
# (FAKE_RUN=fail) gcloud's own notice that worker 1 failed with status 3 and, like the real
# one, keeps waiting for the other workers until they are stopped (the pkill arrives), then
# exits with worker 0's status (143, killed). FAKE_RUN=hang waits for a SIGTERM forward.
FAKE_GCLOUD = r"""#!/bin/bash
printf '%s\x1f' "$@" >> "$FAKE_DIR/gcloud.log"; printf '\n' >> "$FAKE_DIR/gcloud.log"
wait_for() {  # a pattern in the log, up to 20 s
  for _ in $(seq 200); do grep -q -- "$1" "$FAKE_DIR/gcloud.log" && return 0; sleep 0.1; done
  return 1
}
case "$*" in
  *" describe "*) echo "ERROR: (gcloud.compute.tpus.tpu-vm.describe) NOT_FOUND: Resource 'projects/p/locations/z/nodes/$5' was not found" >&2; exit 1 ;;
  *" create "*|*" delete "*) exit 0 ;;
  *" scp "*) cp "$5" "$FAKE_DIR/shipped.tar.gz" ;;
  *"pip install"*) echo "installed" ;;
  *"pkill"*) exit 0 ;;
  *"-m fmjax.train"*)
    echo "[w0] model gpt2"; echo "[w1] model gpt2"
    if [ "$FAKE_RUN" = fail ]; then
      echo "##### Command execution on worker 1 failed with exit status 3. Continuing."
      wait_for "pkill -TERM" || exit 99
      exit 143
    elif [ "$FAKE_RUN" = hang ]; then
      wait_for "pkill -TERM" || exit 99
      echo "[w0] stopped at step 7 (SIGTERM)"
      exit 0
    fi ;;
  *) echo "fake gcloud: unexpected $*" >&2; exit 64 ;;
esac
"""


@pytest.fixture
def fakes(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in (("python3", FAKE_PYTHON), ("gcloud", FAKE_GCLOUD)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)

    def env(**extra):
        return clean_env(PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
                         FAKE_DIR=str(tmp_path), FMJAX_KILL_GRACE="0", **extra)

    def gcloud_calls():
        log = tmp_path / "gcloud.log"
        if not log.exists():
            return []
        return [line.split("\x1f")[:-1] for line in log.read_text().splitlines()]
    return env, gcloud_calls, tmp_path


LAUNCH = [TPU_VM, "--name=fm1", "--zone=z1", "--accelerator_type=v4-32", "--delete_after", "--",
          *TRAIN_ARGS]


def test_tpu_vm_failing_preflight_stops_before_any_gcloud_call(fakes):
    env, gcloud_calls, tmp = fakes
    result = run(LAUNCH, env=env(FAKE_PREFLIGHT="does not fit"))
    assert result.returncode != 0
    assert "pre-flight check failed" in result.stderr and "--skip_preflight" in result.stderr
    assert (tmp / "python.log").read_text().split() == [
        "-m", "fmjax.preflight", "--config=configs/default.py", "--topology=v4-32",
        "--config.train.steps=10", "--config.train.name=a", "b", "'c'"]
    assert gcloud_calls() == []


def test_tpu_vm_failing_worker_stops_every_worker_and_sets_the_status(fakes):
    env, gcloud_calls, tmp = fakes
    start = time.monotonic()
    result = run(LAUNCH, env=env(FAKE_PREFLIGHT="ok", FAKE_RUN="fail"))
    assert result.returncode == 3, result.stdout + result.stderr  # worker 1's, not gcloud's 143
    assert time.monotonic() - start < 15
    assert "[w0] model gpt2" in result.stdout and "[w1] model gpt2" in result.stdout
    assert "worker 1 failed with status 3; stopping the others" in result.stderr
    calls = gcloud_calls()
    kinds = [c[3] if c[3] != "ssh" else next(w for w in c if w.startswith("--command="))
             for c in calls]
    assert kinds[:3] == ["describe", "create", "scp"]
    assert "pip install" in kinds[3] and "-m fmjax.train" in kinds[4]
    assert kinds[5].startswith("--command=pkill -TERM -f '[-]m fmjax.train'")
    assert kinds[6:] == ["delete"]  # --delete_after, after the stop
    assert all("--worker=all" in c for c in calls[2:6])
    # what was shipped is this checkout as it is on disk
    with tarfile.open(tmp / "shipped.tar.gz") as tar:
        names = set(tar.getnames())
    assert {"launch/tpu_vm.sh", "fmjax/distributed.py", "setup.py"} <= names
    assert not any(n.startswith(".venv") for n in names)


def test_tpu_vm_sigterm_is_forwarded_to_every_worker(fakes):
    env, gcloud_calls, _ = fakes
    proc = subprocess.Popen(["bash", *LAUNCH], cwd=ROOT, env=env(FAKE_PREFLIGHT="ok",
                                                                 FAKE_RUN="hang"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in proc.stdout:
        if line.startswith("[w1] model"):
            proc.send_signal(signal.SIGTERM)
            break
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    assert "[w0] stopped at step 7 (SIGTERM)" in out
    assert "re-run the same command to resume" in err
    stops = [c for c in gcloud_calls() if any("pkill" in w for w in c)]
    assert len(stops) == 1 and "pkill -KILL" not in " ".join(stops[0])  # TERM only: it saves
    assert gcloud_calls()[-1][3] == "delete"


# ---- slurm.sbatch -----------------------------------------------------------------------------

def test_slurm_dry_run_one_process_per_gpu():
    result = run([SLURM, *TRAIN_ARGS[:1], "--workdir=/shared/runs/one", *TRAIN_ARGS[2:]],
                 env=clean_env(DRY_RUN="1", PYTHON="/shared/venv/bin/python"))
    assert result.returncode == 0, result.stderr
    comment, command = result.stdout.strip().splitlines()
    assert comment == "# slurm.sbatch: 2 nodes x 8 GPUs, one process per gpu: 16 processes of fmjax.train"
    assert shlex.split(command) == [
        "env", "NCCL_DEBUG=WARN", "XLA_PYTHON_CLIENT_MEM_FRACTION=0.90",
        "srun", "--nodes=2", "--ntasks=16", "--ntasks-per-node=8", "--gpu-bind=none",
        "--kill-on-bad-exit=1", "--label", f"--chdir={ROOT}",
        "/shared/venv/bin/python", "-m", "fmjax.train", "--expect_accelerator=gpu",
        "--config=configs/default.py", "--workdir=/shared/runs/one", "--config.train.steps=10",
        SPACED]


def test_slurm_dry_run_one_process_per_node_hands_jax_every_gpu():
    result = run([SLURM, "--dry_run", "--process_per=node", "--module=fmjax.finetune", "--",
                  "--config=configs/finetune/default.py"],
                 env=clean_env(SLURM_JOB_NUM_NODES="4", SLURM_GPUS_PER_NODE="h100:4",
                               SLURM_SUBMIT_DIR="/shared/fmjax", WORKDIR="/shared/runs/ft",
                               NCCL_DEBUG="INFO"))
    assert result.returncode == 0, result.stderr
    assert shlex.split(result.stdout.strip().splitlines()[-1]) == [
        "env", "NCCL_DEBUG=INFO", "XLA_PYTHON_CLIENT_MEM_FRACTION=0.90",
        "JAX_LOCAL_DEVICE_IDS=0,1,2,3",
        "srun", "--nodes=4", "--ntasks=4", "--ntasks-per-node=1", "--gpu-bind=none",
        "--kill-on-bad-exit=1", "--label", "--chdir=/shared/fmjax",
        "python3", "-m", "fmjax.finetune", "--expect_accelerator=gpu",
        "--config=configs/finetune/default.py", "--workdir=/shared/runs/ft"]


def test_jax_slurm_detection_is_what_slurm_sbatch_assumes(monkeypatch):
    """Under SLURM, JAX picks one GPU per process, number SLURM_LOCALID, unless
    JAX_LOCAL_DEVICE_IDS says otherwise (read by jax.distributed.initialize): the reason for
    --gpu-bind=none (per GPU) and JAX_LOCAL_DEVICE_IDS (per node) in launch/slurm.sbatch."""
    import inspect
    from jax._src import clusters, distributed
    for key, value in dict(SLURM_JOB_ID="4097", SLURM_STEP_NODELIST="gpu[007-008]",
                           SLURM_NTASKS="16", SLURM_PROCID="11", SLURM_LOCALID="3").items():
        monkeypatch.setenv(key, value)
    detect = clusters.ClusterEnv.auto_detect_unset_distributed_params
    try:
        got = detect(None, None, None, None, None, 300)
    except TypeError:  # older JAX: no initialization_timeout argument
        got = detect(None, None, None, None, None)
    assert tuple(got) == (f"gpu007:{4097 % 4096 + 61440}", 16, 11, [3])
    assert "JAX_LOCAL_DEVICE_IDS" in inspect.getsource(distributed.State.initialize)


def test_slurm_inside_a_job_runs_srun_and_returns_its_status(tmp_path):
    """As sbatch runs it (SLURM_* set, a copy of the script elsewhere), with a fake srun."""
    fake = tmp_path / "srun"
    fake.write_text(textwrap.dedent(f"""\
        #!/bin/sh
        printf '%s\\n' "$@" > {tmp_path}/argv
        echo "$JAX_LOCAL_DEVICE_IDS $NCCL_DEBUG $XLA_PYTHON_CLIENT_MEM_FRACTION" > {tmp_path}/env
        exit 5
        """))
    fake.chmod(0o755)
    spooled = tmp_path / "slurm_script"  # sbatch's copy: the #SBATCH defaults still readable
    spooled.write_text(open(SLURM).read())
    result = run([str(spooled), "--process_per=node", "--config=configs/default.py",
                  "--workdir=/shared/r"],
                 env=clean_env(PATH=f"{tmp_path}{os.pathsep}{os.environ['PATH']}",
                               SLURM_JOB_ID="77", SLURM_JOB_NUM_NODES="3",
                               SLURM_GPUS_PER_NODE="2", SLURM_SUBMIT_DIR="/shared/fmjax"))
    assert result.returncode == 5
    assert "srun ended with status 5" in result.stderr
    assert (tmp_path / "argv").read_text().split("\n")[:4] == [
        "--nodes=3", "--ntasks=3", "--ntasks-per-node=1", "--gpu-bind=none"]
    assert (tmp_path / "env").read_text().split() == ["0,1", "WARN", "0.90"]


def test_slurm_refuses_a_node_local_workdir():
    result = run([SLURM, "--config=configs/default.py", "--workdir=/tmp/run"],
                 env=clean_env(DRY_RUN="1"))
    assert result.returncode == 2
    assert "--workdir=/tmp/run is node-local" in result.stderr
    assert "shared storage" in result.stderr and result.stdout == ""


# ---- launch/k8s/jobset.sh ------------------------------------------------------------------------

def pod_spec(manifest, index=0):
    return manifest["spec"]["replicatedJobs"][index]["template"]["spec"]["template"]["spec"]


def test_jobset_tpu_manifest():
    result = run([JOBSET, "--platform=tpu", "--name=fm-tpu", "--image=us-docker.pkg.dev/p/fmjax:1",
                  "--workdir=gs://bucket/runs/tpu", "--accelerator=tpu-v5-lite-podslice",
                  "--topology=4x4", "--num_slices=2", "--dry_run", "--",
                  "--config=configs/default.py", SPACED])
    assert result.returncode == 0, result.stderr
    first = result.stdout.splitlines()[0]
    assert first.startswith("# kubectl apply -f -")
    manifest = yaml.safe_load(result.stdout)
    assert manifest["apiVersion"] == "jobset.x-k8s.io/v1alpha2" and manifest["kind"] == "JobSet"
    assert manifest["metadata"]["name"] == "fm-tpu"
    assert manifest["metadata"]["annotations"][
        "alpha.jobset.sigs.k8s.io/exclusive-topology"] == "cloud.google.com/gke-nodepool"
    (rjob,) = manifest["spec"]["replicatedJobs"]
    assert rjob["replicas"] == 2  # slices
    job = rjob["template"]["spec"]
    assert job["parallelism"] == job["completions"] == 4  # 16 chips, 4 per host
    assert job["completionMode"] == "Indexed" and job["backoffLimit"] == 0
    pod = pod_spec(manifest)
    assert pod["nodeSelector"] == {"cloud.google.com/gke-tpu-accelerator": "tpu-v5-lite-podslice",
                                   "cloud.google.com/gke-tpu-topology": "4x4"}
    (container,) = pod["containers"]
    assert container["image"] == "us-docker.pkg.dev/p/fmjax:1"
    assert container["command"] == ["python3", "-m", "fmjax.train"]
    assert container["args"] == ["--expect_accelerator=tpu", "--config=configs/default.py",
                                 SPACED, "--workdir=gs://bucket/runs/tpu"]
    assert container["resources"]["limits"] == {"google.com/tpu": 4}
    assert pod["terminationGracePeriodSeconds"] > 120  # fmjax's preemption grace fits inside


def test_jobset_gpu_manifest_points_every_pod_at_pod_zero():
    result = run([JOBSET, "--platform=gpu", "--name=fm-gpu", "--image=img:2",
                  "--workdir=gs://bucket/runs/gpu", "--accelerator=nvidia-h100-80gb",
                  "--replicas=3", "--gpus_per_node=4", "--", "--config=configs/default.py"])
    assert result.returncode == 0, result.stderr
    manifest = yaml.safe_load(result.stdout)
    (rjob,) = manifest["spec"]["replicatedJobs"]
    job = rjob["template"]["spec"]
    assert rjob["replicas"] == 1 and job["parallelism"] == job["completions"] == 3
    assert job["completionMode"] == "Indexed"
    assert manifest["spec"]["network"]["enableDNSHostnames"] is True
    pod = pod_spec(manifest)
    assert pod["nodeSelector"] == {"cloud.google.com/gke-accelerator": "nvidia-h100-80gb"}
    (container,) = pod["containers"]
    env = {e["name"]: e for e in container["env"]}
    # JobSet names pod i of job j <jobset>-<replicatedJob>-<j>-<i>, under the subdomain <jobset>
    port = container["ports"][0]["containerPort"]
    assert env["FMJAX_COORDINATOR_ADDRESS"]["value"] == f"fm-gpu-{rjob['name']}-0-0.fm-gpu:{port}"
    assert env["FMJAX_NUM_PROCESSES"]["value"] == "3"
    assert env["FMJAX_PROCESS_ID"]["valueFrom"]["fieldRef"]["fieldPath"] == \
        "metadata.annotations['batch.kubernetes.io/job-completion-index']"
    assert env["JAX_LOCAL_DEVICE_IDS"]["value"] == "0,1,2,3"
    assert env["NCCL_DEBUG"]["value"] == "WARN"
    assert container["resources"]["limits"] == {"nvidia.com/gpu": 4}
    assert container["args"] == ["--expect_accelerator=gpu", "--config=configs/default.py",
                                 "--workdir=gs://bucket/runs/gpu"]


def test_jobset_apply_pipes_the_manifest_to_kubectl(tmp_path):
    fake = tmp_path / "kubectl"
    fake.write_text(textwrap.dedent(f"""\
        #!/bin/sh
        echo "$@" > {tmp_path}/argv
        cat > {tmp_path}/stdin
        """))
    fake.chmod(0o755)
    args = [JOBSET, "--platform=tpu", "--name=fm", "--image=i", "--workdir=gs://b/r",
            "--accelerator=tpu-v6e-slice", "--topology=2x4", "--namespace=ml"]
    result = run([*args, "--apply", "--", "--config=configs/default.py"],
                 env=clean_env(KUBECTL=str(fake)))
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "argv").read_text().split() == ["--namespace=ml", "apply", "-f", "-"]
    rendered = run([*args, "--", "--config=configs/default.py"]).stdout
    assert (tmp_path / "stdin").read_text() == rendered
    manifest = yaml.safe_load(rendered)
    job = manifest["spec"]["replicatedJobs"][0]["template"]["spec"]
    assert job["parallelism"] == 1  # v6e 2x4: 8 chips on one host
    assert pod_spec(manifest)["containers"][0]["resources"]["limits"] == {"google.com/tpu": 8}


@pytest.mark.parametrize("args, fragment", [
    (["--platform=tpu", "--accelerator=tpu-v4-podslice", "--workdir=gs://b/r"],
     "--topology=AxB[xC] is required"),
    (["--platform=gpu", "--accelerator=nvidia-l4", "--replicas=2", "--workdir=/data/run"],
     "--workdir=/data/run: the 2 pods share no disk"),
])
def test_jobset_bad_input_names_the_flag(args, fragment):
    result = run([JOBSET, "--name=fm", "--image=i", *args, "--", "--config=configs/default.py"])
    assert result.returncode == 2 and fragment in result.stderr, result.stderr
