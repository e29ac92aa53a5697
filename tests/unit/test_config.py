"""The typed run config: defaults, validation messages, dotted overrides, JSON round trip, describe()."""

import dataclasses
import json

import pytest

from prefixrl.config import (
    ClusterConfig,
    EvalConfig,
    ModelConfig,
    OptimConfig,
    ParallelConfig,
    PrefixConfig,
    RLConfig,
    RolloutConfig,
    TrainConfig,
    apply_overrides,
    describe,
    field_docs,
    from_dict,
    to_dict,
)


class FakeSpec:
    """Architecture stand-in with ModelSpec's parallel-check interface (8 heads, 2 KV heads, 6 layers)."""

    num_heads, num_kv_heads, num_layers = 8, 2, 6

    def valid_tensor_parallel_sizes(self):
        return [1, 2]

    def check_parallel(self, *, tensor_parallel, pipeline_parallel):
        if tensor_parallel not in (1, 2):
            raise ValueError(f"tensor parallel size {tensor_parallel}: use one of [1, 2]")
        if self.num_layers % pipeline_parallel:
            raise ValueError(f"pipeline parallel size {pipeline_parallel}: use one of [1, 2, 3, 6]")


def test_paper_defaults():
    cfg = TrainConfig()
    assert (cfg.rollout.n, cfg.rollout.prompts_per_step, cfg.rollout.temperature) == (8, 128, 1.0)
    assert (cfg.prefix.num_cuts, cfg.prefix.low, cfg.prefix.high, cfg.prefix.unprefixed_copies) == (3, 0.4, 0.8, 1)
    assert (cfg.optim.lr, cfg.optim.weight_decay, cfg.optim.warmup_steps, cfg.optim.clip_grad) == (1e-6, 0.01, 10, 1.0)
    assert (cfg.rl.estimator, cfg.rl.loss, cfg.rl.kl_coef) == ("reinforce", "policy_gradient", 0.0)
    assert (cfg.eval.num_samples, cfg.eval.temperature) == (256, 0.7)
    assert cfg.max_prompt_tokens == 36000 - 16384


def test_every_field_has_a_docstring():
    def walk(cfg):
        docs = field_docs(type(cfg))
        for f in dataclasses.fields(cfg):
            assert docs.get(f.name), f"{type(cfg).__name__}.{f.name} has no docstring"
            if dataclasses.is_dataclass(getattr(cfg, f.name)):
                walk(getattr(cfg, f.name))

    walk(TrainConfig())


def test_configs_are_frozen_and_keyword_only():
    with pytest.raises(dataclasses.FrozenInstanceError):
        TrainConfig().steps = 3
    with pytest.raises(TypeError):
        RolloutConfig(8)


def test_overrides_convert_by_annotation():
    cfg = apply_overrides(
        TrainConfig(),
        [
            "rollout.n=16", "optim.lr=1e-5", "optim.betas=(0.9, 0.95)", "logging.plots=false", "model.fp8=None",
            "rollout.kv_cache_gib=2", "prefix.prefixed_to_unprefixed=none", "data.problems=/tmp/p.jsonl",
            "rl.tis_cap=2", "rl.loss=ppo_clipped", "steps=7",
        ],
    )
    assert cfg.rollout.n == 16 and cfg.optim.lr == 1e-5 and cfg.optim.betas == (0.9, 0.95)
    assert cfg.logging.plots is False and cfg.model.fp8 is None and cfg.rollout.kv_cache_gib == 2
    assert cfg.prefix.prefixed_to_unprefixed is None and cfg.prefix.unprefixed_copies == 0
    assert cfg.data.problems == "/tmp/p.jsonl" and cfg.rl.tis_cap == 2.0 and isinstance(cfg.rl.tis_cap, float)
    assert cfg.rl.loss == "ppo_clipped" and cfg.steps == 7


def test_overrides_are_validated_together():
    # Raising max_new_tokens alone would exceed max_model_len; with max_model_len raised in the same call it is fine.
    cfg = apply_overrides(
        TrainConfig(), ["rollout.max_new_tokens=40000", "rollout.max_model_len=50000", "optim.max_seq_len=50000"]
    )
    assert cfg.rollout.max_new_tokens == 40000


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("rollout.nn=16", "did you mean 'rollout.n'"),
        ("optim.weight_decy=0.1", "did you mean 'optim.weight_decay'"),
        ("rolout.n=16", "did you mean 'rollout.n'"),
        ("rollout=16", "is a config section"),
        ("rollout.n", "is not key=value"),
        ("rollout.n=eight", "'eight' is not an integer"),
        ("logging.plots=maybe", "not a boolean"),
        ("model.dtype=fp16", "'fp16' is not one of 'float32', 'bfloat16'"),
        ("optim.betas=0.9", "needs 2 values"),
        ("rl.estimator=reinforc", "did you mean 'reinforce'"),
        ("prefix.prefixed_to_unprefixed=2", "use one of [1, 3]"),
        ("rollout.max_new_tokens=36000", "raise rollout.max_model_len"),
        ("model.fp8=e4m3", "set model.dtype=bfloat16"),
    ],
)
def test_bad_overrides_name_the_fix(override, message):
    with pytest.raises(ValueError) as err:
        apply_overrides(TrainConfig(), [override])
    assert message in str(err.value)


def test_cross_section_checks():
    with pytest.raises(ValueError, match="set optim.max_seq_len=36000"):
        TrainConfig(optim=OptimConfig(max_seq_len=1024))
    with pytest.raises(ValueError, match="rl.estimator=rloo needs rollout.n >= 2"):
        TrainConfig(rl=RLConfig(estimator="rloo"), rollout=RolloutConfig(n=1))
    with pytest.raises(ValueError, match="eval.max_new_tokens"):
        TrainConfig(eval=EvalConfig(max_new_tokens=40000))
    with pytest.raises(ValueError, match="sequence_parallel"):
        ParallelConfig(sequence_parallel=True)


def test_parallel_check_names_valid_sizes():
    ParallelConfig(tensor_parallel=2, pipeline_parallel=3).check(6, spec=FakeSpec())
    ParallelConfig(tensor_parallel=2, pipeline_parallel=3).check(12, spec=FakeSpec())
    with pytest.raises(ValueError, match=r"use a product in \[1, 2, 4, 8\]"):
        ParallelConfig(tensor_parallel=3).check(8)
    with pytest.raises(ValueError, match=r"engine_tensor_parallel=4 does not divide world size 2; use one of \[1, 2\]"):
        ParallelConfig(engine_tensor_parallel=4).check(2)
    with pytest.raises(ValueError, match=r"use one of \[1, 2\]"):
        ParallelConfig(tensor_parallel=4).check(8, spec=FakeSpec())
    with pytest.raises(ValueError, match=r"num_heads=8 and num_kv_heads=2; use one of \[1, 2\]"):
        ParallelConfig(engine_tensor_parallel=4).check(8, spec=FakeSpec())
    assert ParallelConfig(tensor_parallel=2, pipeline_parallel=2).data_parallel(16) == 4


def test_train_check_batch_split_and_world_size():
    cfg = TrainConfig(rollout=RolloutConfig(prompts_per_step=3, n=2), optim=OptimConfig(micro_batch_size=4))
    with pytest.raises(ValueError, match="multiple of 4"):
        cfg.check(1)
    two = ClusterConfig(gpus_per_node=2)
    ok = TrainConfig(rollout=RolloutConfig(prompts_per_step=4, n=2), optim=OptimConfig(micro_batch_size=2), cluster=two)
    ok.check(2)
    with pytest.raises(ValueError, match="launched with 4 ranks but cluster.num_nodes"):
        TrainConfig(cluster=two).check(4)


def test_layout_is_checked_against_the_cluster():
    with pytest.raises(ValueError, match=r"does not divide world size 8; use a product in \[1, 2, 4, 8\]"):
        apply_overrides(TrainConfig(), ["cluster.gpus_per_node=8", "parallel.tensor_parallel=3"])
    with pytest.raises(ValueError, match="spans nodes"):
        apply_overrides(
            TrainConfig(), ["cluster.num_nodes=2", "cluster.gpus_per_node=2", "parallel.engine_tensor_parallel=4"]
        )
    with pytest.raises(ValueError, match="not HH:MM:SS"):
        ClusterConfig(time_limit="4h")


def test_dict_round_trip_is_json_safe():
    cfg = apply_overrides(TrainConfig(), ["optim.betas=0.8,0.9", "model.tokenizer=tok.model", "eval.num_problems=5"])
    d = json.loads(json.dumps(to_dict(cfg)))
    assert d["optim"]["betas"] == [0.8, 0.9]
    assert from_dict(d) == cfg
    assert from_dict({}) == TrainConfig()
    assert from_dict({"rollout": {"n": 4}}).rollout == RolloutConfig(n=4)


def test_from_dict_rejects_unknown_and_mistyped():
    with pytest.raises(ValueError, match="did you mean 'rollout.n'"):
        from_dict({"rollout": {"nn": 4}})
    with pytest.raises(ValueError, match="did you mean 'steps'"):
        from_dict({"step": 4})
    with pytest.raises(ValueError, match="is not an integer"):
        from_dict({"rollout": {"n": "4x"}})
    with pytest.raises(ValueError, match="must be a mapping"):
        from_dict({"rollout": 4})


def test_section_validation_messages():
    with pytest.raises(ValueError, match="need 0 < low <= high < 1"):
        PrefixConfig(low=0.9, high=0.5)
    with pytest.raises(ValueError, match="rl.loss='dapo' is not supported"):
        RLConfig(loss="dapo")
    with pytest.raises(ValueError, match="model.path is empty"):
        ModelConfig(path="")
    with pytest.raises(ValueError, match="must be >= 1"):
        RolloutConfig(n=0)


def test_describe_lists_every_leaf_with_its_doc():
    text = describe(TrainConfig())
    assert "rollout.n: int = 8" in text
    assert "Rollouts per prompt" in text
    assert "model.fp8: 'e4m3' | 'hybrid' | None = None" in text
    assert "optim.betas: tuple[float, float] = [0.9, 0.999]" in text
    assert text.count("\n") > 2 * 60
