"""Real Slurm on localhost: start the daemons (slurm/local_cluster.sh), submit the tiny 2-rank recipe
(`prefixrl_tiny_cpu_1n2c`: Megatron TP=2 + one vLLM engine with TP=2 in the same two torchrun ranks) once with
`sbatch slurm/prefixrl.sbatch` and once through nemo-run's Slurm executor, check both finish and write metrics, and
check the signal -> checkpoint -> requeue -> resume path of the sbatch script. The daemons are stopped by PID.

The jobs run the real trainer (`prefixrl train` / `prefixrl.train:main`) on tiny prepared data (a 30-step SFT base
and oracle traces, `tests.helpers.synthetic`), a few steps each. Slurm that cannot be installed or started FAILS the
test with the reason; set PREFIXRL_SKIP_SLURM=1 to skip it explicitly.
"""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from prefixrl.runlog import read_metrics
from tests.helpers.synthetic import data_overrides, prepare_tiny_data

REPO = Path(__file__).resolve().parents[2]
RECIPE = "prefixrl_tiny_cpu_1n2c"
JOB_TIMEOUT_S = 420
SMALL = ["rollout.prompts_per_step=4", "rollout.n=4", "optim.micro_batch_size=16", "eval.every_steps=0",
         "logging.tensorboard=false", "cluster.time_limit=00:10:00"]  # fmt: skip

pytestmark = [pytest.mark.slow, pytest.mark.vllm]


def _run(cmd, *, env, timeout=JOB_TIMEOUT_S, check=True):
    out = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout)
    if check and out.returncode:
        raise AssertionError(f"{cmd} exited {out.returncode}:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
    return out


@pytest.fixture(scope="module")
def slurm_env(tmp_path_factory):
    if os.environ.get("PREFIXRL_SKIP_SLURM") == "1":
        pytest.skip("PREFIXRL_SKIP_SLURM=1 set: the real-Slurm tests are skipped on request")
    state = tmp_path_factory.mktemp("slurm")
    venv_bin = str(Path(sys.executable).parent)
    env = {**os.environ, "PREFIXRL_SLURM_DIR": str(state), "SLURM_CONF": str(state / "slurm.conf"),
           "PATH": f"{venv_bin}{os.pathsep}{os.environ['PATH']}", "PREFIXRL_VENV": str(Path(venv_bin).parent)}
    started = _run(["bash", "slurm/local_cluster.sh", "start"], env=env, timeout=600, check=False)
    try:
        if started.returncode:
            pytest.fail(f"could not install/start Slurm on localhost:\n{started.stdout[-2000:]}\n{started.stderr[-3000:]}")
        yield env
    finally:
        stopped = _run(["bash", "slurm/local_cluster.sh", "stop"], env=env, timeout=120, check=False)
        assert stopped.returncode == 0, stopped.stderr


@pytest.fixture(scope="module")
def job_args(slurm_env, tmp_path_factory):
    """Recipe overrides for a short real run on prepared data."""
    data = prepare_tiny_data(tmp_path_factory.mktemp("synthetic"), env=slurm_env)
    return [*data_overrides(data), *SMALL]


def _finished(out_dir: Path) -> dict:
    assert (out_dir / "finished").exists(), f"the job did not finish its run in {out_dir}"
    return json.loads((out_dir / "finished").read_text())


def _sbatch(env, tmp_path, *args, wait=True):
    cmd = ["sbatch", "--parsable", "--cpus-per-task=2", "--time=00:10:00", f"--output={tmp_path}/slurm-%j.out",
           *(["--wait"] if wait else []), "slurm/prefixrl.sbatch", *args]  # fmt: skip
    return _run(cmd, env=env, check=False)


def _logs(tmp_path: Path) -> str:
    return "\n".join(p.read_text() for p in tmp_path.glob("slurm-*.out"))


def test_sbatch_script_runs_the_recipe(slurm_env, job_args, tmp_path):
    out_dir = tmp_path / "run"
    res = _sbatch(slurm_env, tmp_path, RECIPE, *job_args, "steps=2", f"logging.out_dir={out_dir}")
    assert res.returncode == 0, f"sbatch job failed ({res.returncode}):\n{res.stderr}\n{_logs(tmp_path)[-4000:]}"
    summary = _finished(out_dir)
    assert summary["run_name"] == RECIPE and summary["steps"] == 2
    assert summary["world_size"] == 2 and summary["tensor_parallel"] == 2 and summary["engine_tensor_parallel"] == 2
    assert [m["step"] for m in read_metrics(out_dir / "metrics.jsonl")] == [1, 2]
    assert summary["mismatch_max"] < 1.001  # the sharded engine and the TP=2 trainer agree after every sync


def test_sbatch_without_recipe_is_a_usage_error(slurm_env, tmp_path):
    res = _sbatch(slurm_env, tmp_path, "steps=2")
    assert res.returncode != 0
    assert "the recipe argument is missing" in _logs(tmp_path)


def test_nemo_run_slurm_executor(slurm_env, job_args, tmp_path):
    out_dir = tmp_path / "run"
    code = ("import sys; from recipes.launch import launch; "
            "launch(sys.argv[1], executor='slurm', dryrun=False, overrides=sys.argv[2:])")
    env = {**slurm_env, "NEMORUN_HOME": str(tmp_path / "nemorun"), "PYTHONPATH": str(REPO)}
    res = _run([sys.executable, "-c", code, RECIPE, *job_args, "steps=2", f"logging.out_dir={out_dir}"],
               env=env, check=False)  # fmt: skip
    assert res.returncode == 0, f"nemo-run launch failed:\n{res.stdout[-3000:]}\n{res.stderr[-4000:]}"
    summary = _finished(out_dir)
    assert summary["world_size"] == 2 and summary["run_name"] == RECIPE and summary["steps"] == 2


def test_signal_checkpoints_requeues_and_resumes(slurm_env, job_args, tmp_path):
    out_dir = tmp_path / "run"
    res = _sbatch(slurm_env, tmp_path, RECIPE, *job_args, "steps=6", "checkpoint.every_steps=0",
                  f"logging.out_dir={out_dir}", wait=False)  # fmt: skip
    assert res.returncode == 0, res.stderr
    job = res.stdout.strip().split(";")[0]
    deadline = time.monotonic() + 2 * JOB_TIMEOUT_S
    while not (out_dir / "metrics.jsonl").exists() or not read_metrics(out_dir / "metrics.jsonl"):
        assert time.monotonic() < deadline, f"the job logged no step:\n{_logs(tmp_path)[-4000:]}"
        time.sleep(0.5)
    # What Slurm does at --signal=B:USR1@300: signal the batch shell, which forwards it to the ranks.
    _run(["scancel", "--signal=USR1", "--batch", job], env=slurm_env)
    while True:
        assert time.monotonic() < deadline, f"job {job} did not finish after the requeue:\n{_logs(tmp_path)[-4000:]}"
        state = _run(["scontrol", "show", "job", "-o", job], env=slurm_env, check=False).stdout
        if "JobState=COMPLETED" in state and "Restarts=1" in state:
            break
        if "JobState=FAILED" in state or "JobState=CANCELLED" in state or "Restarts=0" in state and "COMPLETED" in state:
            pytest.fail(f"{state}\n{_logs(tmp_path)[-4000:]}")
        time.sleep(1)
    summary = _finished(out_dir)
    assert 1 <= summary["resumed_from"] < 6 and summary["steps"] == 6  # checkpointed on the signal, resumed there
    assert [m["step"] for m in read_metrics(out_dir / "metrics.jsonl")] == [1, 2, 3, 4, 5, 6]
    assert "requeueing job" in _logs(tmp_path)
