"""The benchmark's regime stage (prefixrl.bench.regime) and its problems (prefixrl.bench.problems): splits, the
hard filter, the base's teacher and warm start, base adoption, the level pick and its confirmation, the trace pools;
split out of test_bench.py."""

import json
from dataclasses import replace

import pytest

from prefixrl.bench.problems import base_corpus, base_examples, level_problems, make_bench_splits, task_config
from prefixrl.bench.regime import BASE_FIELDS, RegimeSettings
from prefixrl.bench.report import regime_markdown
from prefixrl.bench.reproduce import PRESETS, BenchSettings


def test_splits_are_disjoint_from_the_base_corpus_and_have_the_levels():
    s = RegimeSettings(levels=(2, 3, 4), per_level=20, train_hard=30, heldout_hard=10, heldout_medium=10)
    corpus = {p.prompt for lv in s.levels for p in level_problems(s, level=lv, count=20, tag="sft", seed=0)}
    blocked = set(list(corpus)[:5]) | {p.prompt for p in level_problems(s, level=4, count=5, tag="x", seed=0)}
    splits = make_bench_splits(s, hard=4, medium=3, exclude=blocked)
    assert [len(splits[k]) for k in ("train_hard", "heldout_hard", "heldout_medium")] == [30, 10, 10]
    prompts = [p.prompt for ps in splits.values() for p in ps]
    assert len(set(prompts)) == len(prompts) and not set(prompts) & blocked
    assert all(p.metadata["num_terms"] == 4 for p in splits["train_hard"] + splits["heldout_hard"])
    assert all(p.metadata["num_terms"] == 3 for p in splits["heldout_medium"])
    assert all(0 <= int(p.answer) <= s.max_answer for p in splits["train_hard"])
    terms = [p.metadata["terms"] for p in splits["train_hard"]]  # a large first term, then one-digit steps
    assert all(abs(t) <= s.max_operand for ts in terms for t in ts[1:]) and max(ts[0] for ts in terms) > 99
    assert len({p.answer for p in splits["train_hard"]}) > 20


def test_base_examples_slip_at_the_set_rate_and_the_presets_use_slips_on_short_chains():
    """The base's SFT chains: all sound without slips; with slips, the wrong answers per level follow
    1 - (1 - slip_rate) ** (terms - 1); the presets that report figures train such a base."""
    from prefixrl.tasks.arith import ArithVerifier, chain_is_sound

    s = RegimeSettings(levels=(2, 6), per_level=300, random_label_start=True)
    assert all(chain_is_sound(p, t) for p, t in base_examples(s))
    slipped = base_examples(replace(s, slip_rate=0.3))
    for level in (2, 6):
        right = [ArithVerifier()(p, t) for p, t in slipped if p.metadata["num_terms"] == level]
        assert abs(sum(right) / len(right) - 0.7 ** (level - 1)) < 0.07
    for name in ("small", "full-v8", "full", "full-v19"):  # full*: chains up to 8 terms, slips after the clean phase
        r = PRESETS[name].regime
        assert r.slip_rate > 0 and r.clean_steps > 0 and max(r.levels) <= (8 if name in ("full", "full-v19") else 6)
    with pytest.raises(ValueError, match="slipping teacher would never be used"):
        RegimeSettings(slip_rate=0.3, clean_steps=100, sft_steps=100)
    with pytest.raises(ValueError, match="slip_rate=1.0"):
        RegimeSettings(slip_rate=1.0)
    with pytest.raises(ValueError, match=r"early_slip_rate=0.5 must be in \[0, slip_rate=0.3\]"):
        RegimeSettings(slip_rate=0.3, early_slip_rate=0.5, clean_steps=10)
    with pytest.raises(ValueError, match="clean_steps=0 is never used"):
        RegimeSettings(slip_rate=0.3, early_slip_rate=0.1)


def test_a_teacher_slipping_on_some_kinds_of_line_makes_problems_hard_by_their_own_lines():
    """With slip_kind_fraction < 1 the base's SFT chains slip only on lines of the teacher's kinds, the teacher's
    accuracy falls with a problem's count of such lines, and the regime figures count them per problem (None at
    1.0, every line alike); the full-kinds preset is full with that one change (and a shorter base)."""
    from prefixrl.bench.problems import slip_kinds, slip_line_count, slip_lines
    from prefixrl.bench.regime import slip_line_figures
    from prefixrl.tasks.arith import ArithVerifier, line_kinds, term_labels

    s = RegimeSettings(levels=(2, 6), per_level=300, multiply_prob=0.3, max_answer=9999, first_term_max=9999,
                       width=4, slip_rate=0.5, slip_kind_fraction=0.5, clean_steps=10, sft_steps=20)
    kinds = slip_kinds(s)
    right, expected = [], []
    for p, text in base_examples(s):
        lines = zip(term_labels(p), p.metadata["terms"][1:], line_kinds(p, text))
        assert all(k in ".f" for lb, t, k in lines if (lb, t) not in kinds)  # other kinds never slip
        right.append(ArithVerifier()(p, text))
        expected.append(0.5 ** slip_line_count(kinds, p))  # right iff none of its slip-kind lines slips
    assert len(right) == 600 and abs(sum(right) - sum(expected)) / len(right) < 0.05
    assert all(r for r, e in zip(right, expected) if e == 1.0)
    assert slip_kinds(replace(s, slip_kind_fraction=1.0)) is None
    problems = level_problems(s, level=6, count=50, tag="t", seed=0)
    fig = slip_lines(s, problems)
    assert 0 <= fig["min"] < fig["mean"] < fig["max"] <= 5 and 0.3 < fig["kind_share"] < 0.7
    figs = slip_line_figures(s, {"train_hard": problems, "heldout_medium": problems[:10]}, problems[:5])
    assert sum(solved for solved, _ in figs["train_hard_sourced_by_count"].values()) == 5
    assert sum(n for _, n in figs["train_hard_sourced_by_count"].values()) == 50
    assert set(figs["splits"]) == {"train_hard", "heldout_medium"}
    assert slip_line_figures(replace(s, slip_kind_fraction=1.0), {"train_hard": problems}, []) is None
    regime = {"hard_level_terms": 6, "medium_level_terms": 3, "source_cap": 64, "k": 8, "answer_space": 10_000,
              "slip_lines": figs, "base_pass_at_1": {},
              **{k: 0.5 for k in ("base_pass_at_k_train_hard", "sourced_fraction", "prefix_success")}}
    text = regime_markdown(regime)
    row = next(line for line in text.splitlines() if "sourced by that count" in line)
    assert all(f"{n}: {a} / {b}" in row for n, (a, b) in figs["train_hard_sourced_by_count"].items())
    assert f"lines per train_hard problem, mean (min-max) | - | {fig['mean']:.2f} ({fig['min']}-" in text
    for bad in (0.0, 1.2):
        with pytest.raises(ValueError, match=f"slip_kind_fraction={bad} must be in"):
            RegimeSettings(slip_kind_fraction=bad)
    with pytest.raises(ValueError, match="hard_filter_pool=0 must be >= 1"):
        RegimeSettings(hard_filter_pool=0)
    kinds_preset, full = PRESETS["full-kinds"], PRESETS["full"]
    assert kinds_preset.regime.slip_kind_fraction == 0.5 and "slip_kind_fraction" in BASE_FIELDS
    assert replace(kinds_preset.regime, slip_kind_fraction=1.0, sft_steps=full.regime.sft_steps,
                   checkpoints=full.regime.checkpoints, hard_filter_pool=3) == full.regime
    assert kinds_preset.rl == full.rl and kinds_preset.methods == full.methods


def test_a_multiplying_regime_reaches_the_base_the_splits_and_the_teacher():
    """regime.multiply_prob flows into every stage's problems: the base's chains and the splits multiply (totals
    modulo 1,000), and the slipping teacher's right answers still follow (1 - slip_rate) ** lines."""
    from prefixrl.tasks.arith import ArithVerifier, chain_is_sound

    s = RegimeSettings(levels=(2, 5), per_level=300, multiply_prob=0.3, slip_rate=0.3, clean_steps=10, sft_steps=20)
    examples = base_examples(s)
    assert all(p.metadata["modulus"] == 1000 for p, _ in examples)
    assert 0.2 < sum(t.count(" * ") for _, t in examples) / sum(t.count(" = ") for _, t in examples) < 0.4
    right = [ArithVerifier()(p, t) for p, t in examples if p.metadata["num_terms"] == 5]
    assert abs(sum(right) / len(right) - 0.7**4) < 0.07
    assert all(chain_is_sound(p, t) for p, t in base_examples(replace(s, slip_rate=0.0, clean_steps=0)))
    splits = make_bench_splits(replace(s, train_hard=40, heldout_hard=10, heldout_medium=10), hard=5, medium=2,
                               exclude=set())  # fmt: skip
    assert any(isinstance(t, str) for p in splits["train_hard"] for t in p.metadata["terms"])


def test_train_base_uses_the_early_teacher_then_the_slipping_one(tmp_path, monkeypatch):
    """The first clean_steps draw from chains slipped at early_slip_rate (sound at 0), the rest at slip_rate."""
    import prefixrl.pipeline
    from prefixrl.bench.regime import train_base
    from prefixrl.tasks.arith import ArithVerifier

    seen = {}

    def fake_sft(out, tok, splits, cfg, *, steps, examples, examples_after, **kw):  # records what it is handed
        seen["early"], seen["switch"] = examples, examples_after
        return out / "base", [1.0]

    monkeypatch.setattr(prefixrl.pipeline, "sft_base_model", fake_sft)
    s = RegimeSettings(levels=(2, 5), per_level=200, slip_rate=0.4, early_slip_rate=0.1, clean_steps=10,
                       sft_steps=20, checkpoints=0)
    train_base(tmp_path, s)
    wrong = {name: 1 - sum(ArithVerifier()(p, t) for p, t in ex if p.metadata["num_terms"] == 5) / 200
             for name, ex in (("early", seen["early"]), ("late", seen["switch"][1]))}
    assert seen["switch"][0] == 10
    assert abs(wrong["early"] - (1 - 0.9 ** 4)) < 0.08 and abs(wrong["late"] - (1 - 0.6 ** 4)) < 0.08, wrong


def test_a_warm_started_base_continues_a_saved_checkpoint_with_its_tokenizer(tmp_path, monkeypatch):
    """regime.warm_start: the base's SFT starts from that checkpoint (init) with the tokenizer of the regime
    directory that holds it; a folder that is no saved base, or one without a tokenizer, is refused at setup."""
    import prefixrl.pipeline
    from prefixrl.bench.regime import train_base
    from prefixrl.tokenizer import SentencePieceTokenizer

    src = tmp_path / "src" / "regime"
    ckpt = src / "checkpoints" / "step-00300"
    ckpt.mkdir(parents=True)
    (ckpt / "config.json").write_text("{}")
    s = RegimeSettings(levels=(2, 5), per_level=50, sft_steps=20, checkpoints=0)
    with pytest.raises(ValueError, match="no tokenizer.model next to"):
        RegimeSettings(warm_start=str(ckpt))
    with pytest.raises(ValueError, match="is not a saved base"):
        RegimeSettings(warm_start=str(src))
    other = RegimeSettings(levels=(3, 4), per_level=50, seed=5)  # another corpus: another tokenizer
    texts = [p.prompt for p in base_corpus(other)] + [t for _, t in base_examples(other)]
    SentencePieceTokenizer.train(texts, vocab_size=330).save(src / "tokenizer.model")
    seen = {}

    def fake_sft(out, tok, splits, cfg, *, init, **kw):  # records what it is handed
        seen["init"], seen["vocab"] = init, tok.vocab_size
        return out / "base", [1.0]

    monkeypatch.setattr(prefixrl.pipeline, "sft_base_model", fake_sft)
    train_base(tmp_path / "a", replace(s, warm_start=str(ckpt)))
    src_vocab = SentencePieceTokenizer.load(src / "tokenizer.model").vocab_size
    assert seen == {"init": ckpt, "vocab": src_vocab}
    assert (tmp_path / "a" / "tokenizer.model").read_bytes() == (src / "tokenizer.model").read_bytes()
    train_base(tmp_path / "b", s)
    fresh = (tmp_path / "b" / "tokenizer.model").read_bytes()
    assert seen["init"] is None and fresh != (src / "tokenizer.model").read_bytes() and "warm_start" in BASE_FIELDS


def test_first_term_max_is_validated():
    from prefixrl.tasks.arith import ArithConfig

    with pytest.raises(ValueError, match="first_term_max=1200"):
        ArithConfig(first_term_max=1200, max_answer=999)




def test_adopt_base_copies_a_matching_base_and_refuses_another(tmp_path):
    """--base-from: a base trained with the same settings is copied (its probe too when the probe settings match);
    one trained with other settings is refused naming the field; a directory with its own base keeps it."""
    import json
    from dataclasses import asdict

    from prefixrl.bench.regime import adopt_base

    s = RegimeSettings()
    src = tmp_path / "src"
    (src / "base").mkdir(parents=True)
    (src / "base" / "model.safetensors").write_text("w")
    for name in ("tokenizer.model", "base_prompts.json", "probe.json", "base.json"):
        (src / name).write_text("{}")
    settings = json.loads(json.dumps(asdict(s)))
    copied = adopt_base(src, tmp_path / "a", s, settings)
    assert "probe.json" in copied and (tmp_path / "a" / "base" / "model.safetensors").read_text() == "w"
    assert adopt_base(src, tmp_path / "a", s, {}) == []  # has its own base: untouched, no check needed
    (tmp_path / "b" / "base").mkdir(parents=True)  # left by an interrupted copy: redone over it
    copied = adopt_base(src, tmp_path / "b", replace(s, probe_k=4), settings)
    assert "probe.json" not in copied and (tmp_path / "b" / "base.json").exists()
    copied = adopt_base(src, tmp_path / "t", replace(s, temperature=0.7), settings)  # same base, another probe
    assert "base.json" in copied and "probe.json" not in copied
    copied = adopt_base(src, tmp_path / "g", replace(s, target_pass_at_k=0.1), settings)  # picks other levels from it
    assert "probe.json" in copied
    with pytest.raises(ValueError, match=rf"sft_steps={s.sft_steps} \(here 99\)"):
        adopt_base(src, tmp_path / "c", replace(s, sft_steps=99), settings)
    assert not (tmp_path / "c" / "base.json").exists()
    with pytest.raises(FileNotFoundError, match="no finished base"):
        adopt_base(tmp_path / "nothing", tmp_path / "d", s, settings)


def test_levels_are_picked_on_the_chosen_base_checkpoint(tmp_path):
    """The hard level is the shortest at or under the target on the chosen checkpoint's probe row (the longest level
    when none is); a checkpoint that was not saved is refused with the saved ones listed."""
    from prefixrl.bench.regime import base_checkpoint_dir, pick_levels

    s = RegimeSettings(levels=(2, 4, 8))
    probe = {"curve": {"step-00400": {"2": 0.5, "4": 0.04, "8": 0.0}, "base": {"2": 0.9, "4": 0.5, "8": 0.2}}}
    assert pick_levels(probe, s) == (8, 4)
    assert pick_levels(probe, replace(s, base_checkpoint="step-00400")) == (4, 2)
    for d in (tmp_path / "base", tmp_path / "checkpoints" / "step-00400"):
        d.mkdir(parents=True)
        (d / "config.json").write_text("{}")
    assert base_checkpoint_dir(tmp_path, replace(s, base_checkpoint="step-00400")).name == "step-00400"
    with pytest.raises(ValueError, match=r"choose one of \['base', 'step-00400'\]"):
        base_checkpoint_dir(tmp_path, replace(s, base_checkpoint="step-00123"))


def test_the_hard_level_is_confirmed_on_more_problems_and_moves_longer_while_above_target():
    """confirm_hard_level starts at the probe's pick and measures longer levels until one is at or under the target
    (or the longest); pick_levels then takes the last one measured, and refuses a probe confirmed elsewhere."""
    from prefixrl.bench.regime import confirm_hard_level, pick_levels

    s = RegimeSettings(levels=(2, 4, 6, 8, 10), confirm_problems=256)
    row = {2: 0.9, 4: 0.4, 6: 0.02, 8: 0.0, 10: 0.0}  # the probe's noise put 6 under the 5 % target
    truth = {2: 0.95, 4: 0.45, 6: 0.09, 8: 0.03, 10: 0.01}
    asked: list[int] = []
    confirmed = confirm_hard_level(row, s, lambda lv: asked.append(lv) or truth[lv])
    assert asked == [6, 8] and confirmed == {6: 0.09, 8: 0.03}
    assert confirm_hard_level(row, s, lambda lv: 0.5) == {6: 0.5, 8: 0.5, 10: 0.5}  # never under: the longest
    probe = {"curve": {"base": {str(k): v for k, v in row.items()}},
             "confirm": {str(k): v for k, v in confirmed.items()},
             "confirm_for": {"checkpoint": "base", "problems": 256, "target": 0.05}}
    assert pick_levels(probe, s) == (8, 4)
    with pytest.raises(RuntimeError, match="no confirmation"):  # confirmed against another target
        pick_levels(probe, replace(s, target_pass_at_k=0.1))
    assert pick_levels(probe, replace(s, confirm_problems=0)) == (6, 4)
    with pytest.raises(RuntimeError, match="no confirmation on 128 problems"):
        pick_levels(probe, replace(s, confirm_problems=128))
    with pytest.raises(ValueError, match="confirm_problems=-1"):
        RegimeSettings(confirm_problems=-1)
    text = regime_markdown({"base_pass_at_k_train_hard": 0.03, "sourced_fraction": 0.8, "prefix_success": 0.1,
                            "hard_level_terms": 8, "medium_level_terms": 4, "source_cap": 1, "k": 8, "probe": probe})
    assert "confirmed at base on 256 fresh problems per level: L6 pass@k 0.090, L8 pass@k 0.030" in text


def test_trace_pools_and_the_sound_traces_diagnostic(char_tokenizer):
    """prefixrl_sound cuts only the sound chains (an unsound trace's problem is left out, as is an untraced one);
    prefixrl cuts every trace; the diagnostic runs only when named in methods."""
    from prefixrl.bench.methods import DIAGNOSTICS, METHODS
    from prefixrl.bench.problems import task_config
    from prefixrl.bench.reproduce import trace_pools
    from prefixrl.records import OffPolicyTrace
    from prefixrl.tasks.arith import ArithVerifier, chain_is_sound, solutions

    s = BenchSettings(regime=RegimeSettings(levels=(2, 5), multiply_prob=0.3), methods=("prefixrl", "prefixrl_sound"))
    train = level_problems(s.regime, level=5, count=4, tag="t", seed=0)
    char_tokenizer.name = "char"

    def fmt(p):
        return char_tokenizer.encode(p.prompt + "\n")

    texts = [solutions(p, num=1, cfg=task_config(s.regime, hard=5, medium=2, seed=0))[0] for p in train[:3]]
    lines = texts[1].splitlines()  # a slip on line 2 that line 3 cancels: right answer, unsound chain
    lines[1] = f"{lines[1][:-3]}{(int(lines[1][-3:]) + 1) % 1000:03d}"
    lines[2] = f"{(int(lines[2][:3]) + 1) % 1000:03d}{lines[2][3:]}"
    texts[1] = "\n".join(lines)
    assert ArithVerifier()(train[1], texts[1]) and not chain_is_sound(train[1], texts[1])
    traces = {p.problem_id: OffPolicyTrace(trace_id=f"{p.problem_id}#1", problem_id=p.problem_id, prompt_ids=fmt(p),
                                           trace_ids=char_tokenizer.encode(text), text=text, model="base",
                                           tokenizer="char", num_attempts=1, num_sampled_tokens=9, attempt_index=0)
              for p, text in zip(train, texts)}  # fmt: skip
    pools = trace_pools(train, traces, s, format_prompt=fmt, tokenizer=char_tokenizer)
    assert [len(pools[k]) for k in ("prefixrl", "prefixed_only", "unprefixed", "prefixrl_sound")] == [12, 9, 4, 8]
    ids = {k: {q.problem.problem_id for q in pools[k]} for k in pools}
    assert ids["prefixrl_sound"] == {train[0].problem_id, train[2].problem_id}
    assert ids["prefixrl"] == ids["prefixrl_sound"] | {train[1].problem_id}
    assert "prefixrl_sound" not in BenchSettings().methods and set(DIAGNOSTICS).isdisjoint(METHODS)
    # prefixrl_early: the same problems and mix, its prefixes cut in EARLY_CUTS instead of [0.4, 0.8]
    early = [q for q in pools["prefixrl_early"] if q.prefix_ids]
    assert len(pools["prefixrl_early"]) == 12 and ids["prefixrl_early"] == ids["prefixrl"]
    assert all(0.1 <= q.cut_frac <= 0.4 for q in early) and all(0.4 <= q.cut_frac <= 0.8
                                                                 for q in pools["prefixrl"] if q.prefix_ids)


def test_a_generation_cap_shorter_than_a_worked_solution_is_refused(char_tokenizer):
    """check_gen_tokens names the setting and the tokens a solution of the level needs; that many pass."""
    import re

    from prefixrl.bench.problems import check_gen_tokens

    s = RegimeSettings(levels=(2, 5), multiply_prob=0.3)
    with pytest.raises(ValueError, match=r"rl.gen_tokens=40 cannot hold a worked 5-term solution") as err:
        check_gen_tokens("rl.gen_tokens", 40, s, level=5, tokenizer=char_tokenizer)
    needed = int(re.search(r">= (\d+)", str(err.value)).group(1))
    assert 4 * len("208 b + 9 = 217\n") < needed < 100  # four worked lines and the answer line, one token a char
    check_gen_tokens("rl.gen_tokens", needed, s, level=5, tokenizer=char_tokenizer)
    with pytest.raises(ValueError):
        check_gen_tokens("rl.gen_tokens", needed - 1, s, level=5, tokenizer=char_tokenizer)


def test_the_hard_filter_keeps_problems_the_base_always_fails_in_order_and_resumes(tmp_path):
    """hard_filter keeps, per hard split, the first problems whose check finds no right sample, checks a chunk at
    a time only until enough are kept, saves every result (a resumed run checks no problem twice), and refuses a
    candidate list that runs out; the report names what was kept."""
    from prefixrl.bench.problems import HARD_FILTER_POOL, hard_filter

    s = RegimeSettings(levels=(2, 4), train_hard=20, heldout_hard=5, hard_filter_k=16)
    cands = make_bench_splits(replace(s, train_hard=HARD_FILTER_POOL * 20, heldout_hard=HARD_FILTER_POOL * 5),
                              hard=4, medium=2, exclude=set())
    cands = {k: cands[k] for k in ("train_hard", "heldout_hard")}
    easy = {p.problem_id for ps in cands.values() for p in ps[::3]}  # every third candidate is solved
    checked: list[str] = []

    def check(ps):
        checked.extend(p.problem_id for p in ps)
        return [(p.problem_id in easy, 100) for p in ps]

    path = tmp_path / "hard_filter.json"
    kept, fig = hard_filter(path, s, cands, check)
    want = {k: [p for p in ps if p.problem_id not in easy] for k, ps in cands.items()}
    assert kept["train_hard"] == want["train_hard"][:20] and kept["heldout_hard"] == want["heldout_hard"][:5]
    # one chunk of 32 held enough train_hard problems (of 60); heldout_hard has 15 candidates, one short chunk
    assert len(checked) == len(set(checked)) == 32 + 15
    assert fig["train_hard"] == {"checked": 32, "kept": 20, "kept_fraction": 21 / 32}
    assert fig["k"] == 16 and fig["samples"] == 47 * 16 and fig["tokens"] == 47 * 100 and fig["wall_s"] > 0
    checked.clear()
    assert hard_filter(path, s, cands, check)[0] == kept and checked == []  # resumed: read back, nothing sampled
    with pytest.raises(ValueError, match=r"hard_filter_k=16: only 0 of 60 train_hard candidates fail all 16"):
        hard_filter(tmp_path / "other.json", s, cands, lambda ps: [(True, 1) for _ in ps])
    with pytest.raises(ValueError, match="hard_filter_k=-1"):
        RegimeSettings(hard_filter_k=-1)
    text = regime_markdown({"base_pass_at_k_train_hard": 0.0, "sourced_fraction": 0.8, "prefix_success": 0.1,
                            "hard_level_terms": 4, "medium_level_terms": 2, "source_cap": 1, "k": 8,
                            "hard_filter": fig | {"flops": 1.5e12}})
    assert ("| hard problems: base fails all 16 samples (the paper's pass@512 = 0 rule; `hard_filter`): kept of "
            "checked | - | train_hard 20 of 32, heldout_hard 5 of 15; 752 samples, 1.5e+12 FLOPs (charged to no "
            "method) | - |") in text


def test_an_interrupted_base_sft_continues_where_it_stopped(tmp_path, monkeypatch):
    """Real Megatron (one process): a base SFT killed after step 5 and started again continues from its saved state
    at step 4 (state_every=2) and ends with the losses and weights of an uninterrupted run (the same batches, Adam
    state and schedule); a run that finds no state starts from step 0."""
    import torch
    from safetensors.torch import load_file

    from megatron_ext import runtime
    from megatron_ext.policy import MegatronPolicy
    from prefixrl.pipeline import sft_base_model
    from prefixrl.tokenizer import SentencePieceTokenizer

    s = RegimeSettings(levels=(2, 3), per_level=60, slip_rate=0.3)
    examples = base_examples(s)
    tokenizer = SentencePieceTokenizer.train([p.prompt for p, _ in examples] + [t for _, t in examples],
                                             vocab_size=330)  # fmt: skip
    cfg = task_config(s, hard=3, medium=3, seed=0)
    kw = dict(steps=7, batch=2, seed=3, examples=examples[:60], lr=1e-3, state_every=2,
              examples_after=(3, examples[60:]))
    real_step = MegatronPolicy.train_step
    calls, armed = [], [True]

    class Killed(Exception):
        pass

    def killed_at_step_6(self, *a, **k):
        calls.append(self.step)
        if armed and self.step == 5:
            armed.clear()
            raise Killed
        return real_step(self, *a, **k)

    def sft(out):  # each run in a fresh runtime, as in a new process: the same random init
        runtime.initialize(seed=0)
        try:
            return sft_base_model(out, tokenizer, {}, cfg, **kw)[1]
        finally:
            runtime.shutdown()

    whole = sft(tmp_path / "a")
    monkeypatch.setattr(MegatronPolicy, "train_step", killed_at_step_6)
    with pytest.raises(Killed):
        sft(tmp_path / "b")
    assert [p.name for p in (tmp_path / "b" / "sft_state").glob("iter_*")] == ["iter_0000004"]  # the newest only
    calls.clear()
    resumed = sft(tmp_path / "b")
    assert calls == [4, 5, 6]  # steps 5-7 only
    assert resumed == pytest.approx(whole, abs=1e-6) and len(whole) == 7
    a, b = (load_file(str(next((tmp_path / d / "base").glob("*.safetensors")))) for d in ("a", "b"))
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
