"""Real Slurm on localhost: start the daemons (slurm/local_cluster.sh), submit the tiny recipe once with
`sbatch slurm/prefixrl.sbatch` and once through nemo-run's Slurm executor, check both finish and write metrics, and
check the signal -> checkpoint -> requeue -> resume path of the sbatch script. The daemons are stopped by PID.

The job command is a parameter (environment variables, defaults below). Until the trainer exists, both default to
the stand-in `tests/e2e/standin.py` (Megatron TP=2 over 2 ranks, one metrics line). To run the real tiny recipe:

    PREFIXRL_E2E_TRAIN="-m prefixrl.cli train" PREFIXRL_E2E_ENTRY="prefixrl.train:main" pytest tests/e2e/test_slurm.py

(or change TRAIN_PROGRAM / TRAIN_ENTRY here once `prefixrl train` exists). Slurm that cannot be installed or started
FAILS the test with the reason; set PREFIXRL_SKIP_SLURM=1 to skip it explicitly.
"""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
RECIPE = "prefixrl_tiny_cpu_1n2c"
TRAIN_PROGRAM = os.environ.get("PREFIXRL_E2E_TRAIN", "-m tests.e2e.standin")
"""torchrun program + arguments before `--recipe` in slurm/prefixrl.sbatch (its PREFIXRL_TRAIN)."""
TRAIN_ENTRY = os.environ.get("PREFIXRL_E2E_ENTRY", "tests.e2e.standin:main")
"""`module:function` nemo-run runs with cfg_dict=..."""
JOB_TIMEOUT_S = 300
OVERRIDES = ["steps=2", "cluster.time_limit=00:10:00"]

pytestmark = pytest.mark.slow


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


def _metrics(out_dir: Path) -> list[dict]:
    path = out_dir / "metrics.jsonl"
    assert path.exists(), f"the job wrote no {path}"
    return [json.loads(line) for line in path.read_text().splitlines()]


def _sbatch(env, tmp_path, *args, extra_env=None, wait=True):
    cmd = ["sbatch", "--parsable", "--cpus-per-task=2", "--time=00:10:00", f"--output={tmp_path}/slurm-%j.out",
           *(["--wait"] if wait else []), "slurm/prefixrl.sbatch", *args]  # fmt: skip
    return _run(cmd, env={**env, "PREFIXRL_TRAIN": TRAIN_PROGRAM, **(extra_env or {})}, check=False)


def test_sbatch_script_runs_the_recipe(slurm_env, tmp_path):
    out_dir = tmp_path / "run"
    res = _sbatch(slurm_env, tmp_path, RECIPE, *OVERRIDES, f"logging.out_dir={out_dir}")
    logs = "\n".join(p.read_text() for p in tmp_path.glob("slurm-*.out"))
    assert res.returncode == 0, f"sbatch job failed ({res.returncode}):\n{res.stderr}\n{logs[-4000:]}"
    (record,) = _metrics(out_dir)[-1:]
    assert record["world_size"] == 2 and record["run_name"] == RECIPE
    if "standin/tp_sum" in record:
        assert record["tensor_parallel"] == 2 and record["standin/tp_sum"] == 3.0  # ranks 1 + 2 over the TP group


def test_sbatch_without_recipe_is_a_usage_error(slurm_env, tmp_path):
    res = _sbatch(slurm_env, tmp_path, "steps=2")
    assert res.returncode != 0
    log = "\n".join(p.read_text() for p in tmp_path.glob("slurm-*.out"))
    assert "the recipe argument is missing" in log


def test_nemo_run_slurm_executor(slurm_env, tmp_path):
    out_dir = tmp_path / "run"
    code = ("import sys; from recipes.launch import launch; "
            "launch(sys.argv[1], executor='slurm', dryrun=False, overrides=sys.argv[3:], entry=sys.argv[2])")
    env = {**slurm_env, "NEMORUN_HOME": str(tmp_path / "nemorun"), "PYTHONPATH": str(REPO)}
    res = _run([sys.executable, "-c", code, RECIPE, TRAIN_ENTRY, *OVERRIDES, f"logging.out_dir={out_dir}"],
               env=env, check=False)  # fmt: skip
    assert res.returncode == 0, f"nemo-run launch failed:\n{res.stdout[-3000:]}\n{res.stderr[-4000:]}"
    (record,) = _metrics(out_dir)[-1:]
    assert record["world_size"] == 2 and record["run_name"] == RECIPE


@pytest.mark.skipif(TRAIN_ENTRY != "tests.e2e.standin:main", reason="signal path is exercised with the stand-in")
def test_signal_checkpoints_requeues_and_resumes(slurm_env, tmp_path):
    out_dir = tmp_path / "run"
    res = _sbatch(slurm_env, tmp_path, RECIPE, *OVERRIDES, f"logging.out_dir={out_dir}",
                  extra_env={"PREFIXRL_STANDIN_WAIT_S": "120"}, wait=False)  # fmt: skip
    assert res.returncode == 0, res.stderr
    job = res.stdout.strip().split(";")[0]
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while not (out_dir / "waiting").exists():
        assert time.monotonic() < deadline, "the stand-in never started waiting for the signal"
        time.sleep(0.5)
    # What Slurm does at --signal=B:USR1@300: signal the batch shell, which forwards it to the ranks.
    _run(["scancel", "--signal=USR1", "--batch", job], env=slurm_env)
    while True:
        assert time.monotonic() < deadline, f"job {job} did not finish after the requeue"
        state = _run(["scontrol", "show", "job", "-o", job], env=slurm_env, check=False).stdout
        if "JobState=COMPLETED" in state and "Restarts=1" in state:
            break
        if "JobState=FAILED" in state or "JobState=CANCELLED" in state:
            pytest.fail(state)
        time.sleep(1)
    first, second = _metrics(out_dir)
    assert first["signalled"] and not first["resumed"] and first["restart_count"] == 0
    assert second["resumed"] and not second["signalled"] and second["restart_count"] == 1
