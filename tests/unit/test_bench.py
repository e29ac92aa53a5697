"""The reproduction benchmark's pure parts: presets, FLOPs-to-accuracy, the table's ratios, resuming runs, and
the off-policy loss adapters against the pure losses."""

import json
import math
from dataclasses import replace

import pytest
import torch

from megatron_ext.hooks import MicroBatch, luffy_mixed_loss, off_policy_is_mixed_loss
from prefixrl import losses
from prefixrl.bench.methods import METHODS, RLSettings
from prefixrl.bench.regime import BASE_FIELDS, PROBE_FIELDS, RegimeSettings
from prefixrl.bench.report import regime_markdown, summarize, table_markdown
from prefixrl.bench.reproduce import PRESETS, BenchSettings, _check_settings_file, flops_to_reach, get_preset


def test_presets_and_errors():
    assert get_preset("smoke", seeds=2).seeds == 2 and get_preset("full").seeds == 3
    with pytest.raises(ValueError, match="available presets: full, full-kinds, full-v19, full-v8, small, smoke"):
        get_preset("fast")
    with pytest.raises(ValueError, match="prefixrl must come first"):
        BenchSettings(methods=("rl", "prefixrl"))
    with pytest.raises(ValueError, match="unknown method"):
        BenchSettings(methods=("prefixrl", "dpo"))
    for name in ("full", "full-v19", "full-v8"):  # the sizes
        r = PRESETS[name].regime
        assert r.max_answer + 1 >= 1000 and r.train_hard >= 256 and r.source_cap <= 1024 and PRESETS[name].seeds >= 3
    full = PRESETS["full"]  # full-v19 with a teacher that slips more, for longer: the paper's rule, the core methods
    r = full.regime
    assert r.slip_rate == 0.5 and replace(r, slip_rate=0.2, sft_steps=2400, checkpoints=4) == PRESETS["full-v19"].regime
    assert r.hard_filter_k > 0 and 0 < r.clean_steps < r.sft_steps and r.slip_rate > 0 and not r.warm_start
    assert full.methods[:4] == ("prefixrl", "rl", "sft_rl", "prefixed_only") and set(full.methods) < set(METHODS)


def test_preset_fields_can_be_overridden_and_are_validated():
    from prefixrl.settings import apply_overrides

    s = apply_overrides(get_preset("small"), ["regime.sft_steps=2000", "regime.levels=2,3,4,5,6,7,8,9",
                                              "methods=prefixrl,rl", "rl.max_steps_factor=12"])
    assert s.regime.levels == (2, 3, 4, 5, 6, 7, 8, 9) and s.regime.sft_steps == 2000
    assert s.methods == ("prefixrl", "rl")
    assert s.rl.max_steps_factor == 12.0 and s.regime.slip_rate == get_preset("small").regime.slip_rate
    with pytest.raises(ValueError, match="did you mean 'regime.sft_steps'"):
        apply_overrides(get_preset("small"), ["regime.sftsteps=3"])
    with pytest.raises(ValueError, match="prefixrl must come first"):
        apply_overrides(get_preset("small"), ["methods=rl,prefixrl"])
    with pytest.raises(ValueError, match="clean_steps=800 >= sft_steps=700"):
        apply_overrides(get_preset("small"), ["regime.sft_steps=700"])
    assert apply_overrides(get_preset("small"), ["regime.temperature=0.7"]).regime.temperature == 0.7
    with pytest.raises(ValueError, match=r"temperature=0.0 must be > 0"):
        apply_overrides(get_preset("small"), ["regime.temperature=0"])


def test_settings_file_refuses_other_settings_but_allows_more_seeds_and_other_methods(tmp_path):
    s = PRESETS["smoke"]
    _check_settings_file(tmp_path, s)
    _check_settings_file(tmp_path, replace(s, seeds=3))
    _check_settings_file(tmp_path, replace(s, methods=("prefixrl", "rl", "prefixed_only")))
    assert json.loads((tmp_path / "settings.json").read_text())["methods"] == ["prefixrl", "rl", "prefixed_only"]
    with pytest.raises(FileExistsError, match="other settings"):  # the regime, even before any method ran
        _check_settings_file(tmp_path, replace(s, regime=replace(s.regime, source_cap=7)))
    _check_settings_file(tmp_path, replace(s, rl=replace(s.rl, n=16)))  # no method has run: a regime stage only
    (tmp_path / "runs" / "prefixrl").mkdir(parents=True)
    (tmp_path / "runs" / "prefixrl" / "seed0.json").write_text("{}")
    with pytest.raises(FileExistsError, match="other settings"):  # n=16 is now what the finished run used
        _check_settings_file(tmp_path, s)


def test_settings_file_written_before_a_field_existed_resumes_at_its_default(tmp_path):
    """A directory from before `regime.base_checkpoint` existed ran on the final base: it resumes with the default,
    and is refused when the field is set to something else."""
    import json

    s = PRESETS["smoke"]
    _check_settings_file(tmp_path, s)
    old = json.loads((tmp_path / "settings.json").read_text())
    del old["regime"]["base_checkpoint"]
    (tmp_path / "settings.json").write_text(json.dumps(old))
    _check_settings_file(tmp_path, s)
    (tmp_path / "settings.json").write_text(json.dumps(old))
    with pytest.raises(FileExistsError, match="other settings"):
        _check_settings_file(tmp_path, replace(s, regime=replace(s.regime, base_checkpoint="step-00030")))


def test_flops_to_reach_interpolates():
    pts = [{"flops": 0.0, "a": 0.0}, {"flops": 10.0, "a": 0.2}, {"flops": 20.0, "a": 0.6}]
    assert flops_to_reach(pts, "a", 0.4) == pytest.approx(15.0)
    assert flops_to_reach(pts, "a", 0.0) == 0.0
    assert math.isinf(flops_to_reach(pts, "a", 0.7))


def _curve(method, finals, *, flops_per_point=10.0, uses_traces=False):
    points = [{"flops": i * flops_per_point, "flops_rl": i * flops_per_point, "train_hard/pass@1": a,
               "heldout_hard/pass@1": 0.0, "heldout_medium/pass@1": 0.0, "step": i} for i, a in enumerate(finals)]
    return {"method": method, "seed": 0, "uses_traces": uses_traces, "sourcing_flops": 5.0, "points": points,
            "steps": [{"step": 1, "flops": 1.0, "entropy": 0.5, "reward": 0.0, "grad_norm": 1.0}]}


def test_summary_ratios_by_hand():
    curves = {
        "prefixrl": [_curve("prefixrl", [0.0, 0.3, 0.6], uses_traces=True)],
        "rl": [_curve("rl", [0.0, 0.1, 0.2])],
        "sft_rl": [_curve("sft_rl", [0.0, 0.15, 0.3], uses_traces=True)],
    }
    rep = summarize(curves)
    assert rep["target_accuracy"] == pytest.approx(0.3)
    assert rep["rows"]["sft_rl"]["flops_to_target"][0] == pytest.approx(20.0)
    assert rep["rows"]["prefixrl"]["flops_to_target"][0] == pytest.approx(10.0)
    assert rep["speedup_vs_sft_rl"] == pytest.approx(2.0) and rep["gain_vs_rl"] == pytest.approx(3.0)
    assert math.isinf(rep["rows"]["rl"]["flops_to_target"][0])
    text = table_markdown(rep)
    assert "| prefixrl | 1 | 0.000 ± 0.000 -> 0.600 ± 0.000 |" in text and "never" in text


def test_flops_ratio_uses_each_seeds_own_sft_rl_final():
    """Seed 1's sft_rl ends at 0.2, below the mean of the finals (0.25): against the mean it would 'never' reach its
    own final. Per seed: seed 0 ratio 20 / 10 = 2, seed 1 prefixrl never reaches 0.2 -> 0; mean 1."""

    def seeded(r, seed):
        return {**r, "seed": seed}

    curves = {"prefixrl": [seeded(_curve("prefixrl", [0.0, 0.3, 0.6], uses_traces=True), 0),
                           seeded(_curve("prefixrl", [0.0, 0.1, 0.15], uses_traces=True), 1)],
              "sft_rl": [seeded(_curve("sft_rl", [0.0, 0.15, 0.3], uses_traces=True), 0),
                         seeded(_curve("sft_rl", [0.0, 0.1, 0.2], uses_traces=True), 1)]}
    rep = summarize(curves)
    assert rep["speedup_vs_sft_rl_by_seed"] == pytest.approx([2.0, 0.0]) and rep["speedup_vs_sft_rl"] == 1.0
    assert rep["rows"]["sft_rl"]["flops_to_target"] == pytest.approx((20.0, 0.0))
    assert math.isinf(rep["rows"]["prefixrl"]["flops_to_target"][0])
    assert "(per seed: 2.00, 0.00; 0 where prefixrl never reached it)" in table_markdown(rep)


def test_mean_std_of_never_reached_targets_over_seeds():
    """Two seeds that never reach sft_rl's accuracy (inf FLOPs) must not crash the report (statistics.stdev did)."""
    from prefixrl.bench.report import _mean_std

    mean, std = _mean_std([math.inf, math.inf])
    assert mean == math.inf and math.isnan(std)
    assert _mean_std([1.0, 3.0]) == (2.0, math.sqrt(2.0))


def test_regime_markdown_marks_unmet_targets():
    regime = {"base_pass_at_k_train_hard": 0.03, "sourced_fraction": 0.6, "prefix_success": 0.25,
              "hard_level_terms": 11, "medium_level_terms": 6, "source_cap": 1024, "k": 8,
              "probe": {"curve": {"step-00400": {"6": 0.5, "11": 0.1}, "base": {"6": 0.6, "11": 0.04}}}}
    text = regime_markdown(regime)
    assert "| base_pass_at_k_train_hard | <= 0.05 | 0.030 | yes |" in text
    assert "| sourced_fraction | >= 0.70 | 0.600 | NO |" in text
    assert "| prefix_success | >= 0.10 | 0.250 | yes |" in text
    assert "| base | 0.600 | 0.040 |" in text and "base: base, hard level: 11 terms" in text
    assert "k = 8, sampling temperature 1.0" in text  # a regime.json written before the setting existed
    assert "sampling temperature 0.7" in regime_markdown(regime | {"temperature": 0.7})
    assert regime_markdown({}) == ""
    regime |= {"prefix_success_by_trace": {"all": 0.25, "sound": 0.4, "unsound": math.nan, "sound_traces": 3,
                                           "unsound_traces": 0},
               "sourced_trace_kinds": {"sound": 3, "wrong_line": 0, "other": 1}}
    text = regime_markdown(regime)
    assert "| prefix_success from sound traces (3 prefixes) | - | 0.400 | - |" in text
    assert "| prefix_success from unsound traces (0 prefixes) | - | nan | - |" in text
    assert "| sourced traces: sound, wrong_line, other (`trace_kind`) | - | 3 / 0 / 1 | - |" in text
    regime["difficulty"] = {"chi2": 2.53, "dof": 7, "p_value": 0.925,
                            "by_multiplications": {"0": {"problems": 60, "sourced": 0.95, "p_per_sample": 0.0081}}}
    text = regime_markdown(regime)
    assert "| chi2 2.5 on 7 dof, p = 0.925 | - |" in text
    assert "| problems with 0 multiplying terms (60): sourced, success per sample | - | 0.950, 0.0081 | - |" in text
    assert "not measured: the sourcing cap is one round" in regime_markdown(regime | {"difficulty": None})
    regime |= {"answer_space": 10_000,
               "chance": {"p_per_sample": 1e-4, "pass_at_k": 0.0008, "sourced_fraction": 0.0973}}
    assert ("| a uniformly random answer (10,000 possible): pass@k, sourced at the cap (`difficulty.chance_floor`) "
            "| - | 0.0008, 0.097 | - |") in regime_markdown(regime)
    regime["base_first_errors"] = {"wrong_samples": 2040, "by_kind": {"lookup": 0.9, "arith": 0.1},
                                   "top": [["lookup", 7, 0.6], ["lookup", 9, 0.2], ["arith", 0, 0.1],
                                           ["copy", 0, 0.01]]}
    text = regime_markdown(regime)
    assert "| the base's wrong train_hard samples (2,040): first error by kind (`first_error`) | - | lookup 0.90, " \
           "arith 0.10 | - |" in text
    assert "| ... most common first errors (kind, worked line, share) | - | lookup L7 0.60, lookup L9 0.20, " \
           "arith L0 0.10 | - |" in text
    assert "per worked line" not in text  # an older regime.json has no line_failure: no row
    # line 2 (fewer than 20 chains reach it) is left out
    regime["base_first_errors"]["line_failure"] = [[0, 2048, 0.69], [1, 640, 0.68], [2, 19, 0.6]]
    assert ("| ... per worked line: share of the chains reaching it that first fail there (chains) | - | "
            "L0 0.69 (2,048), L1 0.68 (640) | - |") in regime_markdown(regime)
    assert "SFT teacher" not in regime_markdown(regime)  # a regime.json from before the figure: no row
    regime |= {"teacher_pass_at_1": {"6": 0.5, "11": 0.2}, "base_pass_at_1": {"train_hard": 0.01}}
    text = regime_markdown(regime)
    assert "| - | 6 terms 0.500, 11 terms 0.200 | - |" in text
    assert "/ the teacher's at the hard level (11 terms; far below 1: the base may still be learning" in text
    assert "see more_base) | - | 0.050 | - |" in text and "heldout_medium pass@1 / the teacher's" not in text
    assert "biased low" not in regime_markdown(regime | {"hard_filter": None})  # a regime without the filter
    kept = {"checked": 320, "kept": 256}
    regime |= {"hard_filter": {"k": 64, "train_hard": kept, "heldout_hard": kept, "samples": 1, "flops": 1.0},
               "base_pass_at_1": {"train_hard": 0.01, "heldout_medium": 0.1}}
    text = regime_markdown(regime)
    assert "(11 terms; biased low: the split keeps problems the base fails 64 times; far below 1" in text
    assert "heldout_medium pass@1 / the teacher's at the medium level (6 terms; far below 1" in text
    assert "see more_base) | - | 0.200 | - |" in text


def test_the_teacher_accuracy_is_the_base_data_ceiling():
    """Clean chains are all right; a teacher that slips on a line with probability 0.5 gets a 3-term chain (2 worked
    lines) right about 1 time in 4, and longer chains less often."""
    from prefixrl.bench.problems import teacher_accuracy

    s = RegimeSettings(levels=(3, 6), multiply_prob=0.3, max_answer=9999, first_term_max=9999, width=4)
    assert teacher_accuracy(s, count=100) == {"3": 1.0, "6": 1.0}
    slipping = teacher_accuracy(replace(s, slip_rate=0.5), count=400)
    assert 0.18 < slipping["3"] < 0.32 and slipping["6"] < 0.1


def _mb(B=4, T=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    mask = torch.zeros(B, T)
    mask[:, 2:5] = 1.0
    return MicroBatch(index_B=torch.tensor([3, 1, 0, 2]), tokens_BT=torch.zeros(B, T, dtype=torch.long),
                      labels_BT=torch.zeros(B, T, dtype=torch.long), loss_mask_BT=mask,
                      advantages_B=torch.randn(B, generator=g), old_logprobs_BT=-torch.rand(B, T, generator=g))


def test_off_policy_adapters_select_rows_by_batch_index():
    mb = _mb()
    logp = -torch.rand(4, 6, generator=torch.Generator().manual_seed(1))
    off_full = torch.tensor([False, False, True, True])  # rows of the full batch
    w_full = torch.tensor([1.0, 1.0, 0.5, 0.25])
    off_mb = off_full[mb.index_B].float()  # [True, False, False, True]
    got, _ = off_policy_is_mixed_loss(off_full, w_full, max_weight=1.0)(logp, mb)
    on, _ = losses.policy_gradient(logp, mb.advantages_B, mb.loss_mask_BT * (1 - off_mb)[:, None], num_tokens=1.0)
    off, _ = losses.off_policy_is_loss(logp, mb.old_logprobs_BT, mb.advantages_B, mb.loss_mask_BT * off_mb[:, None],
                                       num_tokens=1.0, sequence_weights_B=w_full[mb.index_B])
    assert got.item() == pytest.approx((on + off).item())
    # all rows on-policy: plain REINFORCE
    got, _ = off_policy_is_mixed_loss(torch.zeros(4, dtype=torch.bool), torch.ones(4))(logp, mb)
    ref, _ = losses.policy_gradient(logp, mb.advantages_B, mb.loss_mask_BT, num_tokens=1.0)
    assert got.item() == pytest.approx(ref.item())
    got, _ = luffy_mixed_loss(off_full)(logp, mb)
    ref, _ = losses.luffy_loss(logp, mb.old_logprobs_BT, mb.advantages_B, mb.loss_mask_BT, off_full[mb.index_B],
                               num_tokens=1.0)
    assert got.item() == pytest.approx(ref.item())


def test_methods_after_prefixrl_evaluate_at_flops_intervals():
    """eval_every=6 of prefixrl_steps=12: a point each time another half of PrefixRL's RL FLOPs (20 here) is spent,
    however many (cheap SFT or costly large-n) steps that takes; a method without traces has the sourcing FLOPs (80)
    on top and gets as many points again up to the total (100); without a budget (PrefixRL itself) every 6 steps."""
    from types import SimpleNamespace

    from prefixrl.bench.methods import _eval_points, _Run

    ctx = SimpleNamespace(s=replace(RLSettings(), prefixrl_steps=12, eval_every=6), budget=100.0, budget_rl=20.0)
    assert _eval_points(ctx, uses_traces=True) == [10.0, 20.0]
    assert _eval_points(ctx, uses_traces=False) == [10.0, 20.0, 60.0, 100.0]
    run = object.__new__(_Run)
    run.ctx, run.eval_at = ctx, _eval_points(ctx, uses_traces=False)
    spent = 0.0
    run.flops = SimpleNamespace(total=lambda include_sourcing: spent)
    due = []
    for spent in (5.0, 9.0, 10.0, 12.0, 45.0, 59.0, 70.0, 100.0, 120.0):
        due.append(run._eval_due())
    assert due == [False, False, True, False, True, False, True, True, False]  # 45 passes 20 only: one point
    run.eval_at = _eval_points(SimpleNamespace(s=ctx.s, budget=0.0, budget_rl=0.0), uses_traces=False)
    assert run.eval_at is None
    run.step = 6
    assert run._eval_due()
    run.step = 7
    assert not run._eval_due()


def test_evaluations_and_rollouts_sample_at_the_regime_temperature(monkeypatch):
    """RegimeSettings.temperature reaches every sampling call of the methods: evaluation, rollouts, and the
    policy's log-probs (PolicyConfig.temperature, so the trained policy is the one sampled)."""
    from types import SimpleNamespace

    from prefixrl.bench import methods
    from prefixrl.records import Problem

    calls = []

    class Engine:
        def generate(self, prompts, *, n, max_tokens, temperature, top_p=1.0, seed=None):
            calls.append(temperature)
            c = SimpleNamespace(token_ids=[1], finish_reason="stop", logprobs=[-0.1])
            return [[c] * n for _ in prompts]

    probs = [Problem(problem_id=f"p{i}", prompt="Compute 1 a + 1.", answer="2", metadata={"terms": [1, 1]})
             for i in range(3)]
    ctx = SimpleNamespace(s=replace(RLSettings(), eval_problems=2, eval_samples=2), engine=Engine(),
                          tokenizer=SimpleNamespace(decode=lambda ids: "1 a + 1 = 3\nANSWER: 3"),
                          verifier=lambda p, t: True,
                          format_prompt=lambda p: [5, 6], eval_splits={"train_hard": probs}, temperature=0.7,
                          base_dir="unused")
    got = methods._evaluate(ctx, 0)
    assert got["train_hard/pass@1"] == 1.0 and calls == [0.7]
    assert got["train_hard/line_failure"] == [[0, 4, 1.0]]  # 2 problems x 2 samples, each wrong at line 0
    import megatron_ext.policy

    captured = {}
    monkeypatch.setattr(megatron_ext.policy, "MegatronPolicy", lambda cfg: captured.setdefault("cfg", cfg))
    methods._policy(ctx, lr=1e-4)
    assert captured["cfg"].temperature == 0.7
    assert RegimeSettings().temperature == 1.0 and "temperature" in PROBE_FIELDS and "temperature" not in BASE_FIELDS

    import prefixrl.train

    class Sampled(Exception):
        pass

    def generate_groups(engine, prompts, *, s, step, tokenizer, verifier):
        calls.append(s.temperature)
        raise Sampled

    monkeypatch.setattr(prefixrl.train, "generate_groups", generate_groups)
    ctx.budget = 1.0
    with pytest.raises(Sampled):  # the first rollout of an RL run
        methods._on_policy(ctx, "rl", 0, pool=probs, n=2, uses_traces=False,
                           run=SimpleNamespace(step=0, spent=lambda: 0.0))
    assert calls == [0.7, 0.7]


def test_a_resumed_run_continues_at_its_step_and_phase(monkeypatch):
    """The control flow of resuming (the snapshot itself is saved and loaded by the real stack in the e2e smoke
    test): RL step i of a run is run step offset + i, and sft_rl skips its SFT phase once the snapshot says "rl"."""
    from types import SimpleNamespace

    import prefixrl.train
    from prefixrl.bench import methods
    from prefixrl.records import Problem

    class Sampled(Exception):
        pass

    steps = []

    def generate_groups(engine, prompts, *, s, step, tokenizer, verifier):
        steps.append(step)
        raise Sampled

    monkeypatch.setattr(prefixrl.train, "generate_groups", generate_groups)
    probs = [Problem(problem_id=f"p{i}", prompt="x", answer="1") for i in range(3)]
    ctx = SimpleNamespace(s=RLSettings(), budget=1.0, temperature=1.0, engine=None, tokenizer=None, verifier=None,
                          traces={"a": SimpleNamespace(prompt_ids=[1], trace_ids=[2])}, pools={"unprefixed": probs})
    with pytest.raises(Sampled):
        methods._on_policy(ctx, "sft_rl", 0, pool=probs, n=2, uses_traces=True, offset=5,
                           run=SimpleNamespace(step=12, spent=lambda: 0.0))  # fmt: skip
    assert steps == [7]

    events = []

    class Run:
        def __init__(self, ctx, method, seed, *, uses_traces, lr):
            self.step, self.phase = 8, phase

        def point(self):
            events.append("point")

        def set_lr(self, lr):
            events.append(f"lr={lr}")

        def snapshot(self):
            events.append(f"snapshot {self.phase}")

    monkeypatch.setattr(methods, "_Run", Run)
    monkeypatch.setattr(methods, "_sft_steps", lambda run, data, *, steps, batch, seed: events.append(f"sft {steps}"))
    monkeypatch.setattr(methods, "_on_policy", lambda *a, run, offset, **k: events.append(f"rl from {offset}"))
    for phase, expected in (("main", ["sft 1", "point", f"lr={ctx.s.lr}", "snapshot rl", "rl from 1"]),
                            ("rl", ["rl from 1"])):  # fmt: skip
        events.clear()
        methods.sft_rl(ctx, 0)
        assert events == expected, (phase, events)


def test_rl_low_lr_trains_at_its_own_lr_past_the_step_cap(monkeypatch):
    """The rl_low_lr diagnostic builds its run at low_lr (not the shared lr) and is not stopped by the RL step cap
    (prefixrl_steps x max_steps_factor), which ends a plain rl run there; the budget still ends both."""
    from types import SimpleNamespace

    import prefixrl.train
    from prefixrl.bench import methods
    from prefixrl.records import Problem

    class Sampled(Exception):
        pass

    steps, lrs = [], []

    def generate_groups(engine, prompts, *, s, step, tokenizer, verifier):
        steps.append(step)
        raise Sampled

    monkeypatch.setattr(prefixrl.train, "generate_groups", generate_groups)
    s = RLSettings(prefixrl_steps=4, max_steps_factor=2.0)
    cap = 8
    spent = [0.0]

    class Run:
        def __init__(self, ctx, method, seed, *, uses_traces, lr):
            self.step = cap  # a run that has taken as many steps as the cap allows
            lrs.append(lr)

        def spent(self):
            return spent[0]

        def finish(self):
            return "finished"

    monkeypatch.setattr(methods, "_Run", Run)
    probs = [Problem(problem_id=f"p{i}", prompt="x", answer="1") for i in range(3)]
    ctx = SimpleNamespace(s=s, budget=1.0, temperature=1.0, engine=None, tokenizer=None, verifier=None,
                          pools={"unprefixed": probs})
    assert methods.rl(ctx, 0) == "finished" and steps == [] and lrs == [s.lr]
    with pytest.raises(Sampled):
        methods.rl_low_lr(ctx, 0)
    assert steps == [cap] and lrs[-1] == s.low_lr != s.lr
    spent[0] = 1.0  # the budget is spent: it stops too
    assert methods.rl_low_lr(ctx, 0) == "finished" and steps == [cap]
    assert "rl_low_lr" in methods.DIAGNOSTICS and "rl_low_lr" not in methods.METHODS


def test_report_gives_the_gain_with_and_without_sourcing_charged():
    """rl runs on to PrefixRL's total (30); read off its curve at PrefixRL's RL FLOPs (20) it had 0.2, not 0.5."""
    from prefixrl.bench.report import value_at

    pts = _curve("rl", [0.0, 0.1, 0.2, 0.5])["points"]
    assert value_at(pts, "flops_rl", 15.0, "train_hard/pass@1") == pytest.approx(0.15)
    assert math.isnan(value_at(pts, "flops_rl", 31.0, "train_hard/pass@1"))
    rep = summarize({"prefixrl": [_curve("prefixrl", [0.0, 0.3, 0.6], uses_traces=True)],
                     "rl": [_curve("rl", [0.0, 0.1, 0.2, 0.5])]})  # fmt: skip
    assert rep["gain_vs_rl"] == pytest.approx(1.2) and rep["gain_at_rl_flops"] == pytest.approx(3.0)
    assert rep["at_prefixrl_rl_flops"]["rl"]["train_hard"][0] == pytest.approx(0.2)
    assert "prefixrl" not in rep["at_prefixrl_rl_flops"]
    text = table_markdown(rep)
    assert "sourcing not charged (rl at prefixrl's RL FLOPs): 3.00" in text and "| rl | 0.200 ± 0.000 |" in text
    assert "each plain RL run" not in text  # one plain RL run: the line above says it all
    # every plain RL run present gets its ratio, so the paper's "over plain RL at its best" can be read off
    rep = summarize({"prefixrl": [_curve("prefixrl", [0.0, 0.3, 0.6], uses_traces=True)],
                     "rl": [_curve("rl", [0.0, 0.1, 0.2, 0.5])],
                     "rl_low_lr": [_curve("rl_low_lr", [0.0, 0.2, 0.4, 0.6])],
                     "sft_rl": [_curve("sft_rl", [0.0, 0.9], uses_traces=True)]})  # fmt: skip
    assert set(rep["gain_vs_plain_rl"]) == {"rl", "rl_low_lr"}
    assert rep["gain_vs_plain_rl"]["rl_low_lr"] == {"sourcing_charged": pytest.approx(1.0),
                                                    "sourcing_not_charged": pytest.approx(1.5)}
    assert "each plain RL run, sourcing charged (not charged): rl 1.20 (3.00), rl_low_lr 1.00 (1.50)" in (
        table_markdown(rep))


def test_report_pairs_prefixrl_with_rl_of_the_same_seed_along_the_way():
    """At each PrefixRL evaluation, rl of the same seed at the same RL FLOPs and at the same total FLOPs (PrefixRL's
    total includes 5 FLOPs of sourcing); a PrefixRL seed without an rl run is left out."""

    def run(method, seed, accs, sourcing=0.0):
        r = _curve(method, accs, uses_traces=sourcing > 0)
        for pt in r["points"]:
            pt["flops"] += sourcing
        return {**r, "seed": seed}

    curves = {"prefixrl": [run("prefixrl", 0, [0.0, 0.3, 0.6], 5.0), run("prefixrl", 1, [0.0, 0.2, 0.4], 5.0),
                           run("prefixrl", 2, [0.0, 0.9, 0.9], 5.0)],
              "rl": [run("rl", 0, [0.0, 0.1, 0.2, 0.5]), run("rl", 1, [0.0, 0.2, 0.4, 0.8])]}
    rows = summarize(curves)["prefixrl_vs_rl_by_step"]
    assert [r["step"] for r in rows] == [0, 1, 2]
    assert math.isnan(rows[0]["ratio_at_rl_flops"])  # 0 / 0
    assert rows[1]["prefixrl"][0] == pytest.approx(0.25)  # seeds 0 and 1 only
    assert rows[1]["rl_at_rl_flops"][0] == pytest.approx(0.15) and rows[1]["rl_at_flops"][0] == pytest.approx(0.225)
    assert rows[1]["ratio_at_rl_flops"] == pytest.approx(0.25 / 0.15)  # of the means, not a mean of ratios
    assert rows[1]["ratio_at_flops"] == pytest.approx(0.25 / 0.225)
    assert rows[2]["rl_at_flops"][0] == pytest.approx((0.35 + 0.6) / 2)
    text = table_markdown(summarize(curves))
    assert "| 1 | 0.00 ± 0.00 | 0.250 ± 0.071 | 0.150 ± 0.071 | 1.67 |" in text  # RL FLOPs shown in 1e12
    # rl of seed 1 a sliver above 0 at step 1: the ratio stays the ratio of the means (a mean of the per-seed
    # ratios was 5,331 in session 18's report); past the end of rl's curve: "-", not inf
    curves["rl"][1]["points"][1]["train_hard/pass@1"] = 1e-9
    rows = summarize(curves)["prefixrl_vs_rl_by_step"]
    assert rows[1]["ratio_at_rl_flops"] == pytest.approx(0.25 / ((0.1 + 1e-9) / 2))
    curves["rl"] = [run("rl", 0, [0.0, 0.1]), run("rl", 1, [0.0, 0.2])]
    text = table_markdown(summarize(curves))
    assert "| 2 | 0.00 ± 0.00 | 0.500 ± 0.141 | - | - | 0.00 ± 0.00 | - | - |" in text


def test_each_seed_budget_is_its_own_prefixrl_total(tmp_path, monkeypatch):
    """PrefixRL of every seed runs without a budget (seed 1 used to inherit seed 0's); the other methods of a seed
    get that seed's PrefixRL total, also when the PrefixRL run is read back from disk (a resumed benchmark)."""
    from types import SimpleNamespace

    from prefixrl.bench import reproduce

    seen = []

    def fake(name, total):
        def run(ctx, seed):
            seen.append((name, seed, ctx.budget, ctx.budget_rl))
            pts = [{"flops": total + seed, "flops_rl": total / 2 + seed}]
            return SimpleNamespace(to_dict=lambda: {"points": pts})
        return run

    s = replace(get_preset("smoke", seeds=2), methods=("prefixrl", "rl"))
    monkeypatch.setattr(reproduce, "RUNS", {"prefixrl": fake("prefixrl", 100.0), "rl": fake("rl", 0.0)})
    ctx = SimpleNamespace(budget=0.0, budget_rl=0.0)
    reproduce.run_methods(tmp_path, s, ctx)
    assert seen == [("prefixrl", 0, 0.0, 0.0), ("rl", 0, 100.0, 50.0),
                    ("prefixrl", 1, 0.0, 0.0), ("rl", 1, 101.0, 51.0)]
    (tmp_path / "runs" / "rl" / "seed1.json").unlink()
    seen.clear()
    reproduce.run_methods(tmp_path, s, SimpleNamespace(budget=0.0, budget_rl=0.0))
    assert seen == [("rl", 1, 101.0, 51.0)]


def test_wall_times_add_the_regime_stages_and_every_seed():
    """The table a user reads the preset's cost from: minutes per seed and in all; stages with no record are left
    out rather than counted as zero."""
    from prefixrl.bench.report import wall_markdown, wall_times

    curves = {"prefixrl": [dict(_curve("prefixrl", [0.0, 0.1]), wall_s=60.0), dict(_curve("prefixrl", [0.0, 0.1]),
                                                                                   wall_s=180.0)],
              "rl": [_curve("rl", [0.0, 0.1])]}  # a run written before wall_s was recorded
    regime = {"base": {"wall_s": 1200.0}, "probe": {"curve": {}}, "hard_filter": {"k": 64, "wall_s": 300.0},
              "wall_s": {"sourcing": 600.0, "prefix_probe": 30.0}}
    wall = wall_times(curves, regime)
    assert wall["regime"] == {"base": 1200.0, "hard_filter": 300.0, "sourcing": 600.0, "prefix_probe": 30.0}
    assert wall["methods"] == {"prefixrl": [60.0, 180.0], "rl": []}
    assert wall["total"] == pytest.approx(1200 + 300 + 600 + 30 + 240)
    text = wall_markdown(wall)
    assert "| regime: base | - | 20.0 |" in text and "| prefixrl (2 seeds) | 2.0 ± 1.4 | 4.0 |" in text
    assert "| rl" not in text and "| **total** | | **39.5** |" in text


def test_report_pools_where_the_chains_fail_over_seeds():
    """Line 0: 64 + 32 chains, 48 + 8 fail -> 56 / 96; line 1 is reached by 16 + 24 chains, 4 + 12 fail -> 16 / 40;
    line 2 (10 chains) is left out of the table; runs made before the figure was recorded give no table."""
    from prefixrl.bench.report import pooled_line_failure

    a, b = _curve("prefixrl", [0.0, 0.1], uses_traces=True), {**_curve("prefixrl", [0.0, 0.1], uses_traces=True),
                                                              "seed": 1}
    assert "Where the unprefixed" not in table_markdown(summarize({"prefixrl": [a, b]}))
    a["points"][-1]["train_hard/line_failure"] = [[0, 64, 0.75], [1, 16, 0.25], [2, 10, 0.5]]
    b["points"][-1]["train_hard/line_failure"] = [[0, 32, 0.25], [1, 24, 0.5]]
    pooled = pooled_line_failure([a["points"][-1], b["points"][-1]])
    assert pooled == [[0, 96, pytest.approx(56 / 96)], [1, 40, pytest.approx(16 / 40)], [2, 10, pytest.approx(0.5)]]
    text = table_markdown(summarize({"prefixrl": [a, b]}))
    assert "| method | when | L0 | L1 | L2 |" in text and "| prefixrl | final | 0.58 (96) | 0.40 (40) | - |" in text
    assert "| prefixrl | start |" not in text  # the start points have no figure
    for r in (a, b):  # an rl run from the same base: its start row is prefixrl's, shown once
        r["points"][0]["train_hard/line_failure"] = [[0, 64, 0.5]]
    rl = [{**r, "method": "rl", "uses_traces": False} for r in (a, b)]
    text = table_markdown(summarize({"prefixrl": [a, b], "rl": rl}))
    assert "| prefixrl | start | 0.50 (128) |" in text and "| rl | start |" not in text and "| rl | final |" in text
