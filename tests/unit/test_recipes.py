"""Every recipe builds and validates on CPU (configs only, no weights), the GPU layouts fit H100 80 GB by the memory
estimate, and a nemo-run dry run renders for each executor."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from megatron_ext.spec import ModelSpec, tiny_preset
from prefixrl.config import from_dict, to_dict
from recipes._base import model_path
from recipes.launch import absolute_paths, make_executor, resolve_entry
from recipes.memory import H100_GIB, estimate
from recipes.prefixrl import RECIPES, get_recipe

REPO = Path(__file__).resolve().parents[2]
# The shared model_configs lack Qwen3-4B-Instruct-2507's config.json; Qwen3-4B-Thinking-2507 has the same
# architecture (36 layers, 2560 hidden, 32/8 heads, 151936 vocab), so it stands in for the checks.
ARCH_STANDIN = {model_path("Qwen3-4B-Instruct-2507"): model_path("Qwen3-4B-Thinking-2507")}


def spec_of(cfg):
    if cfg.model.path.startswith("tiny-"):
        return tiny_preset(cfg.model.path)
    return ModelSpec.from_pretrained(ARCH_STANDIN.get(cfg.model.path, cfg.model.path))


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_recipe_builds_and_validates(name):
    cfg = get_recipe(name)()
    assert cfg.run_name == name
    spec = spec_of(cfg)
    cfg.check(cfg.cluster.world_size, spec=spec)
    assert cfg.rollout.max_model_len <= spec.max_position_embeddings
    assert from_dict(json.loads(json.dumps(to_dict(cfg)))) == cfg
    if cfg.cluster.accelerator == "gpu":
        assert cfg.model.dtype == "bfloat16" and cfg.rollout.max_new_tokens == 16384  # the paper's cap
        est = estimate(spec, cfg)
        est.check(budget_gib=H100_GIB, gpu_memory_utilization=cfg.rollout.gpu_memory_utilization, n=cfg.rollout.n)


def test_tiny_recipes_fit_the_tiny_model():
    for name in ("prefixrl_tiny_cpu_1n1c", "prefixrl_tiny_cpu_1n2c"):
        cfg = get_recipe(name)()
        assert cfg.cluster.accelerator == "cpu" and cfg.model.dtype == "float32" and cfg.data.verifier == "arith"
        assert cfg.parallel.tensor_parallel == cfg.cluster.world_size


def test_trainer_colocation_layouts():
    from prefixrl.train import check_colocation

    check_colocation(get_recipe("prefixrl_tiny_cpu_1n1c")(), 1)
    check_colocation(get_recipe("prefixrl_tiny_cpu_1n2c")(), 2)  # one engine, TP=2, sharded over both ranks
    with pytest.raises(ValueError, match="set parallel.engine_tensor_parallel=8"):
        check_colocation(get_recipe("prefixrl_qwen3_4b_1n8g")(), 8)  # 4 engine replicas: not wired yet


def test_70b_layout_fits_h100_and_the_alternatives_do_not():
    cfg = get_recipe("prefixrl_llama31_70b_8n8g")()
    spec = spec_of(cfg)
    assert 70e9 < spec.num_params() < 71e9
    est = estimate(spec, cfg)
    assert est.train_peak_gib < H100_GIB
    assert est.trainer_states_gib + cfg.rollout.gpu_memory_utilization * H100_GIB + 4 <= H100_GIB
    assert (cfg.parallel.tensor_parallel, cfg.parallel.pipeline_parallel, cfg.parallel.engine_tensor_parallel) == (8, 4, 8)
    from prefixrl.config import apply_overrides

    # Hand-checked numbers: bf16 weights 2 B x 70.55e9 / 32 ranks = 4.1 GiB, Adam 12 B x 70.55e9 / 64 = 12.3 GiB.
    assert est.weights_gib == pytest.approx(4.11, abs=0.01) and est.optimizer_gib == pytest.approx(12.32, abs=0.01)
    pp2 = apply_overrides(cfg, ["parallel.pipeline_parallel=2"])
    with pytest.raises(ValueError, match="lower rollout.gpu_memory_utilization"):
        estimate(spec, pp2).check(budget_gib=H100_GIB, gpu_memory_utilization=0.6, n=8)
    no_dist = apply_overrides(cfg, ["parallel.distributed_optimizer=false", "parallel.pipeline_parallel=1"])
    with pytest.raises(ValueError, match="training needs"):
        estimate(spec, no_dist).check(budget_gib=H100_GIB, gpu_memory_utilization=0.6, n=8)


def test_fp8_variants():
    for name in ("prefixrl_qwen3_4b_1n8g", "prefixrl_llama31_8b_2n8g", "prefixrl_llama31_70b_8n8g"):
        base, fp8 = get_recipe(name)(), get_recipe(name + "_fp8")()
        assert fp8.model.fp8 == "hybrid" and base.model.fp8 is None
        assert fp8.parallel == base.parallel and fp8.logging.out_dir == f"runs/{name}_fp8"


def test_unknown_recipe_lists_them():
    with pytest.raises(ValueError, match="did you mean 'prefixrl_tiny_cpu_1n2c'") as err:
        get_recipe("prefixrl_tiny_cpu_1n2")
    assert all(name in str(err.value) for name in RECIPES)


def test_paths_made_absolute_and_executor_sizes(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = absolute_paths(get_recipe("prefixrl_tiny_cpu_1n2c")())
    assert cfg.logging.out_dir == str(tmp_path / "runs/prefixrl_tiny_cpu_1n2c")
    assert cfg.model.path == "tiny-llama"  # a preset name, not a path
    with pytest.raises(ValueError, match="use --executor torchrun"):
        make_executor("local", cfg)
    assert make_executor("torchrun", cfg).ntasks_per_node == 2
    with pytest.raises(ValueError, match="use --executor slurm"):
        make_executor("torchrun", get_recipe("prefixrl_llama31_8b_2n8g")())
    with pytest.raises(ValueError, match="no function 'nope'"):
        resolve_entry("prefixrl.config:nope")


DRYRUN = """
import sys
from recipes.launch import launch
launch(sys.argv[1], executor=sys.argv[2], dryrun=True, overrides=sys.argv[3:])
"""


@pytest.mark.parametrize(
    ("recipe", "executor", "expected"),
    [
        ("prefixrl_tiny_cpu_1n1c", "local", ["fdl_runner", "prefixrl_tiny_cpu_1n1c"]),
        ("prefixrl_tiny_cpu_1n2c", "torchrun", ["'torchrun'", "'--nproc-per-node'", "fdl_runner"]),
        ("prefixrl_llama31_70b_8n8g", "slurm",
         ["#SBATCH --nodes=8", "#SBATCH --gpus-per-node=8", "#SBATCH --partition=batch", "--nproc-per-node 8",
          "--nnodes 8", "#SBATCH --account=prefixrl", "CUDA_DEVICE_MAX_CONNECTIONS=1"]),
        ("prefixrl_tiny_cpu_1n2c", "slurm", ["#SBATCH --nodes=1", "--nproc-per-node 2", "#SBATCH --time=00:20:00"]),
    ],
)  # fmt: skip
def test_nemo_run_dryrun_renders(recipe, executor, expected, tmp_path):
    overrides = ["cluster.partition=batch"] if recipe.endswith("8n8g") else ["cluster.time_limit=00:20:00"]
    env = {**os.environ, "NEMORUN_HOME": str(tmp_path / "nr"), "COLUMNS": "400", "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-c", DRYRUN, recipe, executor, *overrides], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=180)  # fmt: skip
    text = out.stdout + out.stderr
    assert out.returncode == 0, text[-3000:]
    for snippet in expected:
        assert snippet in text, f"{snippet!r} not in dry run:\n{text[-4000:]}"
