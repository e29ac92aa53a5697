"""The methods the reproduction benchmark compares, each a function `(ctx, seed) -> Curve`, all from the same base
model and the same hard training problems, all trained by the real stack (Megatron-Core policy, colocated vLLM engine
that receives the weights every step), all stopped at the same FLOPs budget: PrefixRL's total, sourcing included.
A method that uses the traces pays the sourcing up front and so has PrefixRL's RL FLOPs left; one that does not spends
the whole budget on its own training (the issue's "compute-matched, sourcing charged"). Every method is also evaluated
at PrefixRL's RL FLOPs, so the comparison that leaves sourcing out can be read off the same curves.

    prefixrl          3 cuts in [0.4, 0.8] + the unprefixed problem (3:1 mix), n, REINFORCE group mean
    prefixed_only     the same pool without unprefixed prompts (the back-generalization test)
    rl                plain on-policy RL on the unprefixed problems, n
    rl_large_n        plain RL with large_n samples per prompt (the paper's n = 64 control, scaled to the CPU)
    sft_rl            SFT on the sourced traces (sft_epochs, at sft_lr), then plain RL (at lr)
    offpolicy_is      plain RL groups plus the sourced trace as one more member with reward 1, trained with truncated
                      importance weights pi_theta / pi_0 and the acceptance correction 1 / attempts
    luffy             n - 1 on-policy samples + the trace in one group; PPO on-policy, policy shaping p / (p + 0.1)
                      on the trace
    more_base         control: keep training the base model on its own SFT data for the same FLOPs

Diagnostics (DIAGNOSTICS; run only when named in `methods`, never by default):

    prefixrl_sound    PrefixRL whose prefixes come only from sound traces (`tasks.arith.chain_is_sound`): an oracle
                      no real verifier has, to tell whether the traces' quality or the method sets PrefixRL's level
    prefixrl_early    PrefixRL with its cuts early in the traces (`reproduce.EARLY_CUTS`, [0.1, 0.4]) instead of the
                      paper's [0.4, 0.8]: are the early lines what PrefixRL's unprefixed accuracy waits on?
    rl_low_lr         plain RL at its own, lower learning rate (low_lr) and without the step cap: is plain RL starved
                      of reward or destabilised by the shared step size?

FLOPs (prefixrl.flops): sampling 2N per prompt + prefix + completion token, training 6N per trained token, evaluation
not charged; the sourcing cost is charged up front to every method that uses the traces. Megatron and vLLM are
imported inside the functions.

A run is resumable mid-way: at every evaluation point (and at the end of the step in which a stop is requested, e.g.
by SIGTERM) it saves a snapshot (policy weights, Adam state, scheduler, FLOPs, the curve so far, its phase) under
`Context.snapshots`; a run that finds one continues from it. Every step's prompts, sampling seed and SFT batch are a
function of (seed, step), so the continued run draws what the uninterrupted one would have.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from prefixrl.records import FinishReason, OffPolicyTrace, PrefixedProblem, Problem, Rollout, RolloutGroup

logger = logging.getLogger(__name__)


@dataclass(kw_only=True, frozen=True)
class RLSettings:
    """What every method shares (a preset of `prefixrl.bench.reproduce` fills them)."""

    prefixrl_steps: int = 30
    """PrefixRL steps; their FLOPs, sourcing included, are every method's budget."""
    max_steps_factor: float = 3.0
    """No RL method runs more than this many times prefixrl_steps (SFT steps: 10 times more), whatever budget is left:
    a cap for methods that do not pay for sourcing and so get far more steps than PrefixRL (on the small preset plain
    RL needs about 5.7 times PrefixRL's steps to spend its budget). A run stopped by it shows fewer FLOPs at its end
    than the budget in the table."""
    prompts_per_step: int = 16
    """Prompts (groups) per step, every method."""
    n: int = 8
    """Samples per prompt."""
    large_n: int = 32
    """Samples per prompt of rl_large_n (the paper's 64 does not fit a 2-core budget)."""
    lr: float = 5e-5
    """Adam learning rate of every RL method (constant after 2 warm-up steps). At 5e-4 the first PrefixRL run wrecked
    the base within 8 steps (held-out medium pass@1 0.094 -> 0.000): with 1-3 % rewards the gradients are tiny and
    noisy, and Adam scales them up to full-size steps (docs/reproduction.md)."""
    low_lr: float = 3e-5
    """Learning rate of the rl_low_lr diagnostic (plain RL below the shared lr: on the full preset plain RL at lr
    1e-4 lost the held-out medium level, so is it starved of reward or destabilised by the step size?)."""
    sft_epochs: int = 2
    """Epochs over the sourced traces before sft_rl's RL phase."""
    sft_lr: float = 2e-4
    """Learning rate of the SFT phases: sft_rl's SFT on the traces (its RL phase then uses lr) and the more_base
    control (the base model's final SFT learning rate)."""
    sft_batch: int = 32
    """Sequences per SFT step (sft_rl and more_base)."""
    is_max_weight: float = 1.0
    """Truncation of the pi_theta / pi_0 token weights (offpolicy_is)."""
    gen_tokens: int = 224
    """Generation cap."""
    eval_every: int = 10
    """PrefixRL evaluates every that many steps, every other method at the same FLOPs intervals (and all at the
    start and the end)."""
    eval_samples: int = 8
    """Samples per problem in evaluation (unprefixed, at the regime's sampling temperature)."""
    eval_problems: int = 64
    """Problems per evaluation split (the first ones)."""


@dataclass(slots=True)
class Context:
    """The shared state of one benchmark process."""

    s: RLSettings
    engine: Any
    tokenizer: Any
    verifier: Any
    format_prompt: Callable[[Problem], list[int]]
    base_dir: str
    train: list[Problem]
    """Hard training problems (RL, unprefixed evaluation)."""
    eval_splits: dict[str, list[Problem]]
    """Split name -> problems evaluated at every eval point (train_hard, heldout_hard, heldout_medium)."""
    traces: dict[str, OffPolicyTrace]
    """problem_id -> its sourced trace."""
    sourcing_progress: dict[str, Any]
    """The sourcer's per-problem progress (its cost is charged to the trace methods)."""
    pools: dict[str, list[PrefixedProblem]]
    """"prefixrl" / "prefixed_only" / "unprefixed" / "prefixrl_sound" / "prefixrl_early" training pools."""
    num_params: int
    """Non-embedding parameters N of the policy."""
    sft_examples: list[tuple[Problem, str]] = field(default_factory=list)
    """The base model's own SFT data (more_base)."""
    temperature: float = 1.0
    """Sampling temperature of rollouts and evaluations (`RegimeSettings.temperature`); the policy divides its
    logits by it too, in RL and SFT alike."""
    budget: float = 0.0
    """FLOPs every method may spend, sourcing included where charged: the prefixrl run's total, set by that run in
    each seed (0 while prefixrl itself runs)."""
    budget_rl: float = 0.0
    """The prefixrl run's FLOPs without sourcing: evaluation points sit at its eval_every fractions of it."""
    snapshots: Path | None = None
    """Where runs keep their resumable snapshot (`<snapshots>/<method>/seed<k>.snapshot/`); None: no snapshots."""
    should_stop: Callable[[], bool] = lambda: False
    """Polled after every step: when true, the run saves a snapshot and raises RunStopped."""


class RunStopped(Exception):
    """A run saved a snapshot and stopped because `Context.should_stop` asked it to; rerunning resumes it."""


@dataclass(slots=True)
class Curve:
    """One (method, seed) run: evaluation points and per-step training metrics."""

    method: str
    seed: int
    uses_traces: bool
    sourcing_flops: float
    points: list[dict[str, Any]] = field(default_factory=list)
    """{"step", "flops" (with sourcing when charged), "flops_rl", "<split>/pass@1", ...,
    "train_hard/line_failure"} per evaluation (`_evaluate`)."""
    steps: list[dict[str, float]] = field(default_factory=list)
    """{"step", "flops", "entropy", "reward", "grad_norm"} per optimizer step."""
    wall_s: float = 0.0
    """Seconds of training and evaluation, summed over the processes that ran it (a resumed run counts both)."""
    resumed_at: list[int] = field(default_factory=list)
    """Steps at which the run was continued from a snapshot."""

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "seed": self.seed, "uses_traces": self.uses_traces,
                "sourcing_flops": self.sourcing_flops, "points": self.points, "steps": self.steps,
                "wall_s": self.wall_s, "resumed_at": self.resumed_at}  # fmt: skip


# ------------------------------------------------------------------------------------------------ shared pieces
def _policy(ctx: Context, *, lr: float) -> Any:
    from megatron_ext.policy import MegatronPolicy, OptimizerSettings, PolicyConfig
    from prefixrl.pipeline import SYNTHETIC_MAX_LEN

    return MegatronPolicy(PolicyConfig(model=ctx.base_dir, micro_batch_size=64, max_seq_len=SYNTHETIC_MAX_LEN,
                                       max_tokens_per_microbatch=64 * SYNTHETIC_MAX_LEN,  # any batch size divides
                                       optim=OptimizerSettings(lr=lr, warmup_steps=2, weight_decay=0.0),
                                       temperature=ctx.temperature))  # fmt: skip


def _evaluate(ctx: Context, seed: int) -> dict[str, Any]:
    """{"<split>/pass@1", "<split>/pass@<eval_samples>"} per evaluation split, and "train_hard/line_failure": where
    the policy's unprefixed train_hard chains first fail (`FirstErrorTally.line_failure`: [[line, chains reaching it,
    share failing there], ...]), to tell which lines a method has learned."""
    from prefixrl.bench.difficulty import FirstErrorTally
    from prefixrl.engine.generate import EngineGenerateFn
    from prefixrl.evaluation import EvalConfig, evaluate

    cfg = EvalConfig(num_samples=ctx.s.eval_samples, temperature=ctx.temperature, max_tokens=ctx.s.gen_tokens,
                     seed=10_000 + seed)
    out: dict[str, Any] = {}
    for name, problems in ctx.eval_splits.items():
        tally = FirstErrorTally(ctx.verifier) if name == "train_hard" else None
        rep = evaluate(problems[: ctx.s.eval_problems], generate_fn=EngineGenerateFn(ctx.engine, ctx.tokenizer),
                       verifier=tally or ctx.verifier, format_prompt=ctx.format_prompt, cfg=cfg)  # fmt: skip
        out[f"{name}/pass@1"] = rep.pass_at_k[1]
        out[f"{name}/pass@{ctx.s.eval_samples}"] = rep.pass_at_k[ctx.s.eval_samples]
        if tally is not None:
            out[f"{name}/line_failure"] = tally.line_failure()
    return out


def snapshot_dir(root: Path, method: str, seed: int) -> Path:
    """Where the (method, seed) run keeps its snapshot under `Context.snapshots`."""
    return root / method / f"seed{seed}.snapshot"


_SNAPSHOT_STATE = "run_state.json"


class _Run:
    """Policy + FLOP counter + curve of one (method, seed); the engine starts from the base weights, or from the
    run's snapshot when it has one (then everything else does too)."""

    def __init__(self, ctx: Context, method: str, seed: int, *, uses_traces: bool, lr: float) -> None:
        from megatron_ext.runtime import seed_all
        from prefixrl.flops import FlopCounter
        from prefixrl.sourcer import charge_sourcing

        seed_all(seed)
        self.ctx, self.seed, self.t0 = ctx, seed, time.perf_counter()
        self.dir = snapshot_dir(ctx.snapshots, method, seed) if ctx.snapshots is not None else None
        state = _read_snapshot_state(self.dir)
        self.lr = state["lr"] if state else lr
        """The learning rate now (a phase may change it: `set_lr`)."""
        self.policy = _policy(ctx, lr=lr)
        if self.lr != lr:
            self.policy.set_lr(self.lr)  # the scheduler checks its peak and floor against the snapshot's
        self.phase = "main"
        """Which part of a multi-part method has been reached (sft_rl: "main" = SFT, then "rl")."""
        self.saves = state["saves"] if state else 0
        """Snapshots taken so far; each goes to a new directory, so the one the state names is never overwritten."""
        if state:
            self.policy.load(self.dir / state["policy"])
            self.flops = FlopCounter.from_dict(state["flops"])
            self.curve = Curve(**state["curve"])
            self.step, self.eval_at, self.phase = state["step"], state["eval_at"], state["phase"]
            if self.policy.step != self.step:
                raise RuntimeError(f"snapshot {self.dir} is inconsistent: policy step {self.policy.step}, run step "
                                   f"{self.step}; delete the directory to redo the run from the start")
            self.curve.resumed_at.append(self.step)
            logger.info("%s seed %d: resuming from the snapshot at step %d (%s)", method, seed, self.step, self.dir)
            self.sync()
            return
        self.flops = FlopCounter(num_params=ctx.num_params)
        if uses_traces:
            charge_sourcing(self.flops, ctx.sourcing_progress)
        self.curve = Curve(method=method, seed=seed, uses_traces=uses_traces, sourcing_flops=self.flops.sourcing)
        self.step = 0
        self.eval_at = _eval_points(ctx, uses_traces=uses_traces)
        self.sync()
        self.point()

    def set_lr(self, lr: float) -> None:
        self.policy.set_lr(lr)
        self.lr = lr

    def snapshot(self) -> None:
        """Save everything the run needs to continue: the policy into a new directory, then the state that names
        it (atomically), then the older policy saves are deleted; a kill anywhere leaves a state and its save."""
        import shutil

        if self.dir is None:
            return
        self.saves += 1
        name = f"save{self.saves:05d}"
        path = self.policy.save(self.dir / name)
        wall = self.curve.wall_s + time.perf_counter() - self.t0
        curve = {**self.curve.to_dict(), "wall_s": wall}
        state = {"step": self.step, "phase": self.phase, "lr": self.lr, "eval_at": self.eval_at, "saves": self.saves,
                 "policy": str(path.relative_to(self.dir)), "flops": self.flops.to_dict(), "curve": curve}  # fmt: skip
        tmp = self.dir / (_SNAPSHOT_STATE + ".tmp")
        tmp.write_text(json.dumps(state))
        os.replace(tmp, self.dir / _SNAPSHOT_STATE)
        for old in self.dir.glob("save*"):
            if old.name != name:
                shutil.rmtree(old)
        logger.info("%s seed %d: snapshot at step %d", self.curve.method, self.seed, self.step)

    def sync(self) -> None:
        from prefixrl.train import sync_weights

        sync_weights(self.policy, self.ctx.engine)

    def point(self) -> None:
        p = {"step": self.step, "flops": self.flops.total(include_sourcing=True),
             "flops_rl": self.flops.total(include_sourcing=False), **_evaluate(self.ctx, self.seed)}  # fmt: skip
        self.curve.points.append(p)
        logger.info("%s seed %d step %d: %s", self.curve.method, self.seed, self.step,
                    {k: round(v, 4) for k, v in p.items() if "pass@1" in k})  # fmt: skip

    def spent(self) -> float:
        """FLOPs against the budget: sourcing (when charged) + sampling + training."""
        return self.flops.total(include_sourcing=True)

    def train(self, batch: Any, loss: Any, *, sampled_tokens: int, reward: float) -> None:
        m = self.policy.train_step(batch, loss=loss)
        self.sync()
        self.flops.add_sampling(sampled_tokens)
        self.flops.add_training(int(batch.seq_lens_B.sum()))
        self.step += 1
        self.curve.steps.append({"step": self.step, "flops": self.flops.total(include_sourcing=True),
                                 "entropy": m.get("policy/entropy", math.nan), "reward": reward,
                                 "grad_norm": m.get("policy/grad_norm", math.nan)})  # fmt: skip
        due, stop = self._eval_due(), self.ctx.should_stop()
        if due:
            self.point()
        if due or stop:
            self.snapshot()
        if stop:
            raise RunStopped(f"{self.curve.method} seed {self.seed} stopped at step {self.step} (snapshot in "
                             f"{self.dir}); rerun the same command to resume it")

    def _eval_due(self) -> bool:
        """PrefixRL (no budget yet) evaluates every eval_every steps; every other method on the first step that
        reaches each of its `_eval_points` (several passed in one step give one point), so curves are sampled at the
        same FLOPs whatever a step costs (an SFT step is far cheaper than an RL step)."""
        if self.eval_at is None:
            return self.step % self.ctx.s.eval_every == 0
        rl = self.flops.total(include_sourcing=False)
        if not self.eval_at or rl < self.eval_at[0]:
            return False  # no tolerance: a run that stops at the budget is evaluated once, on the step that reaches it
        self.eval_at = [x for x in self.eval_at if x > rl]
        return True

    def finish(self) -> Curve:
        if self.curve.points[-1]["step"] != self.step:
            self.point()
        del self.policy
        self.curve.wall_s += time.perf_counter() - self.t0
        return self.curve


def _read_snapshot_state(path: Path | None) -> dict[str, Any] | None:
    """A run's saved state, or None when it has no snapshot (the state file is written after the policy's save)."""
    if path is None or not (path / _SNAPSHOT_STATE).exists():
        return None
    return json.loads((path / _SNAPSHOT_STATE).read_text())


def _eval_points(ctx: Context, *, uses_traces: bool) -> list[float] | None:
    """Where a run evaluates, in FLOPs without sourcing (None: every eval_every steps, PrefixRL itself).

    Every method: each eval_every / prefixrl_steps of PrefixRL's RL FLOPs (the same points as PrefixRL's curve). A
    method that does not pay for sourcing has more budget after that: as many points again, evenly up to the total.
    """
    s = ctx.s
    if not ctx.budget:
        return None
    k = max(1, s.prefixrl_steps // s.eval_every)
    points = [ctx.budget_rl * i / k for i in range(1, k + 1)]
    if not uses_traces and ctx.budget > ctx.budget_rl:
        points += [ctx.budget_rl + (ctx.budget - ctx.budget_rl) * i / k for i in range(1, k + 1)]
    return points


def _sampled_tokens(groups: Sequence[RolloutGroup]) -> int:
    return sum(len(r.input_ids) + len(r.completion_ids) for g in groups for r in g.rollouts)


def _on_policy(ctx: Context, method: str, seed: int, *, pool: Sequence[PrefixedProblem], n: int,
               uses_traces: bool, run: _Run | None = None, steps: int | None = None, offset: int = 0,
               max_steps: int | None = None) -> Curve:
    """Plain on-policy RL over `pool` (prefixed or not) until the budget or `max_steps` (default: prefixrl_steps x
    max_steps_factor), or for exactly `steps`; `run` steps before `offset` belong to an earlier phase (RL step i is
    run step offset + i)."""
    from megatron_ext.hooks import policy_gradient_loss
    from prefixrl.advantages import get_estimator
    from prefixrl.batching import RLBatch
    from prefixrl.train import LoopSettings, draw_prompts, generate_groups

    s = ctx.s
    run = run or _Run(ctx, method, seed, uses_traces=uses_traces, lr=s.lr)
    loop = LoopSettings(steps=0, prompts_per_step=s.prompts_per_step, n=n, max_new_tokens=s.gen_tokens,
                        temperature=ctx.temperature, seed=seed)
    estimator = get_estimator("reinforce")
    cap = steps if steps is not None else max_steps or int(s.prefixrl_steps * s.max_steps_factor)
    for i in range(run.step - offset, cap):
        if steps is None and run.spent() >= ctx.budget:
            break
        groups = generate_groups(ctx.engine, draw_prompts(pool, step=i, k=s.prompts_per_step, seed=seed), s=loop,
                                 step=i, tokenizer=ctx.tokenizer, verifier=ctx.verifier)  # fmt: skip
        rewards_Gn = torch.tensor([g.rewards for g in groups], dtype=torch.float32)
        batch = RLBatch.from_groups(groups, estimator(rewards_Gn), pad_id=ctx.tokenizer.pad_id)
        run.train(batch, policy_gradient_loss, sampled_tokens=_sampled_tokens(groups), reward=float(rewards_Gn.mean()))
    return run.finish()


def _trace_rollout(prompt: PrefixedProblem, trace: OffPolicyTrace) -> Rollout:
    assert trace.logprobs is not None, "off-policy baselines need the sourcing log-probs (keep_logprobs=True)"
    return Rollout(input_ids=prompt.input_ids, completion_ids=list(trace.trace_ids), text=trace.text,
                   finish_reason=FinishReason.STOP, reward=1.0, logprobs=list(trace.logprobs))  # fmt: skip


def _with_traces(ctx: Context, method: str, seed: int, *, n_on: int,
                 make_loss: Callable[[torch.Tensor, torch.Tensor], Any]) -> Curve:
    """Groups of `n_on` on-policy samples plus the problem's trace (reward 1); advantages over the whole group."""
    from prefixrl.advantages import get_estimator
    from prefixrl.batching import RLBatch
    from prefixrl.train import LoopSettings, draw_prompts, generate_groups

    s = ctx.s
    pool = [p for p in ctx.pools["unprefixed"] if p.problem.problem_id in ctx.traces]
    run = _Run(ctx, method, seed, uses_traces=True, lr=s.lr)
    loop = LoopSettings(steps=0, prompts_per_step=s.prompts_per_step, n=n_on, max_new_tokens=s.gen_tokens,
                        temperature=ctx.temperature, seed=seed)
    estimator = get_estimator("reinforce")
    for i in range(run.step, int(s.prefixrl_steps * s.max_steps_factor)):
        if run.spent() >= ctx.budget:
            break
        groups = generate_groups(ctx.engine, draw_prompts(pool, step=i, k=s.prompts_per_step, seed=seed), s=loop,
                                 step=i, tokenizer=ctx.tokenizer, verifier=ctx.verifier)  # fmt: skip
        sampled = _sampled_tokens(groups)
        trace = [ctx.traces[g.prompt.problem.problem_id] for g in groups]
        mixed = [RolloutGroup(prompt=g.prompt, rollouts=[*g.rollouts, _trace_rollout(g.prompt, t)])
                 for g, t in zip(groups, trace)]  # fmt: skip
        rewards_Gn = torch.tensor([g.rewards for g in mixed], dtype=torch.float32)
        batch = RLBatch.from_groups(mixed, estimator(rewards_Gn), pad_id=ctx.tokenizer.pad_id)
        off_B = torch.tensor([[False] * n_on + [True] for _ in mixed]).reshape(-1)
        seq_w_B = torch.tensor([[1.0] * n_on + [1.0 / max(1, t.num_attempts)] for t in trace]).reshape(-1)
        on_reward = float(rewards_Gn[:, :n_on].mean())
        run.train(batch, make_loss(off_B, seq_w_B), sampled_tokens=sampled, reward=on_reward)
    return run.finish()


def _sft_steps(run: _Run, examples: Sequence[tuple[list[int], list[int]]], *, steps: int, batch: int,
               seed: int, budget: float | None = None) -> None:
    """SFT steps (from the run's step up to `steps`) on (prompt ids, target ids) pairs drawn with replacement, each
    step's draw a function of (seed, step); 6N per trained token."""
    from megatron_ext.hooks import sft_loss
    from prefixrl.batching import RLBatch

    for k in range(run.step, steps):
        if budget is not None and run.spent() >= budget:
            break
        g = torch.Generator().manual_seed(seed * 1_000_003 + k)
        idx = torch.randint(len(examples), (batch,), generator=g).tolist()
        rl = RLBatch.from_lists([examples[i][0] for i in idx], [examples[i][1] for i in idx], [1.0] * batch,
                                pad_id=run.ctx.tokenizer.pad_id)  # fmt: skip
        run.train(rl, sft_loss, sampled_tokens=0, reward=math.nan)


# ------------------------------------------------------------------------------------------------ the methods
def prefixrl(ctx: Context, seed: int) -> Curve:
    """PrefixRL: on-policy RL over the 3:1 pool of prefixed and unprefixed prompts (sets the FLOPs budget)."""
    return _on_policy(ctx, "prefixrl", seed, pool=ctx.pools["prefixrl"], n=ctx.s.n, uses_traces=True,
                      steps=ctx.s.prefixrl_steps)  # fmt: skip


def prefixed_only(ctx: Context, seed: int) -> Curve:
    """PrefixRL with prefixed prompts only: unprefixed accuracy can rise only by back-generalization."""
    return _on_policy(ctx, "prefixed_only", seed, pool=ctx.pools["prefixed_only"], n=ctx.s.n, uses_traces=True)


def rl(ctx: Context, seed: int) -> Curve:
    """Plain on-policy RL on the unprefixed hard problems, n samples."""
    return _on_policy(ctx, "rl", seed, pool=ctx.pools["unprefixed"], n=ctx.s.n, uses_traces=False)


def rl_large_n(ctx: Context, seed: int) -> Curve:
    """Plain RL with large_n samples per prompt (more on-policy samples for the same FLOPs)."""
    return _on_policy(ctx, "rl_large_n", seed, pool=ctx.pools["unprefixed"], n=ctx.s.large_n, uses_traces=False)


def sft_rl(ctx: Context, seed: int) -> Curve:
    """SFT on the sourced traces for sft_epochs, then plain RL (the paper's strongest baseline)."""
    s = ctx.s
    run = _Run(ctx, "sft_rl", seed, uses_traces=True, lr=s.sft_lr)  # one optimizer: SFT at sft_lr, then RL at lr
    data = [(t.prompt_ids, list(t.trace_ids)) for t in ctx.traces.values()]
    sft = max(1, math.ceil(s.sft_epochs * len(data) / s.sft_batch))
    if run.phase == "main":
        _sft_steps(run, data, steps=sft, batch=s.sft_batch, seed=seed)
        run.point()
        run.set_lr(s.lr)
        run.phase = "rl"
        run.snapshot()
    return _on_policy(ctx, "sft_rl", seed, pool=ctx.pools["unprefixed"], n=s.n, uses_traces=True, run=run,
                      offset=sft)  # fmt: skip


def offpolicy_is(ctx: Context, seed: int) -> Curve:
    """On-policy groups plus the trace, trained with truncated importance weights (acceptance-corrected)."""
    from megatron_ext.hooks import off_policy_is_mixed_loss

    return _with_traces(ctx, "offpolicy_is", seed, n_on=ctx.s.n,
                        make_loss=lambda off_B, w_B: off_policy_is_mixed_loss(off_B, w_B,
                                                                              max_weight=ctx.s.is_max_weight))


def luffy(ctx: Context, seed: int) -> Curve:
    """LUFFY: n - 1 on-policy samples + the trace per group, policy shaping on the trace tokens."""
    from megatron_ext.hooks import luffy_mixed_loss

    return _with_traces(ctx, "luffy", seed, n_on=ctx.s.n - 1, make_loss=lambda off_B, w_B: luffy_mixed_loss(off_B))


def more_base(ctx: Context, seed: int) -> Curve:
    """Control: more base-model SFT on its own data (worked chains of every level) for the same FLOPs."""
    s = ctx.s
    run = _Run(ctx, "more_base", seed, uses_traces=False, lr=s.sft_lr)
    eos = ctx.tokenizer.eos_id
    data = [(ctx.format_prompt(p), ctx.tokenizer.encode(text) + [eos]) for p, text in ctx.sft_examples]
    _sft_steps(run, data, steps=int(s.prefixrl_steps * s.max_steps_factor * 10), batch=s.sft_batch, seed=seed,
               budget=ctx.budget)  # fmt: skip
    return run.finish()


def prefixrl_sound(ctx: Context, seed: int) -> Curve:
    """Diagnostic: PrefixRL on the problems whose sourced trace is sound, prefixes of those traces only (3:1 mix),
    sourcing charged as for prefixrl, run to the same budget. Only the arithmetic task's oracle (`chain_is_sound`)
    can pick these traces; a verifier that reads the answer alone cannot."""
    if not ctx.pools["prefixrl_sound"]:
        raise RuntimeError(f"prefixrl_sound: none of the {len(ctx.traces)} sourced traces is a sound chain; the "
                           "diagnostic has nothing to train on (leave it out of methods)")
    return _on_policy(ctx, "prefixrl_sound", seed, pool=ctx.pools["prefixrl_sound"], n=ctx.s.n, uses_traces=True)


def prefixrl_early(ctx: Context, seed: int) -> Curve:
    """Diagnostic: PrefixRL with its 3 cuts early in the traces (`reproduce.EARLY_CUTS`, not the paper's [0.4, 0.8]),
    3:1 mix, sourcing charged, the same budget: does training the early lines, which every unprefixed chain must pass,
    carry PrefixRL further on the unprefixed problems?"""
    return _on_policy(ctx, "prefixrl_early", seed, pool=ctx.pools["prefixrl_early"], n=ctx.s.n, uses_traces=True)


def rl_low_lr(ctx: Context, seed: int) -> Curve:
    """Diagnostic: plain RL (n samples, unprefixed) at low_lr instead of the shared lr, run to the whole budget (its
    step cap is the SFT one, 10x max_steps_factor): does plain RL still trail PrefixRL when its step size cannot
    destabilise it, and when it gets every FLOP the trace methods pay for sourcing?"""
    s = ctx.s
    run = _Run(ctx, "rl_low_lr", seed, uses_traces=False, lr=s.low_lr)
    return _on_policy(ctx, "rl_low_lr", seed, pool=ctx.pools["unprefixed"], n=s.n, uses_traces=False, run=run,
                      max_steps=int(s.prefixrl_steps * s.max_steps_factor * 10))  # fmt: skip


METHODS: dict[str, Callable[[Context, int], Curve]] = {
    f.__name__: f for f in (prefixrl, rl, sft_rl, prefixed_only, more_base, luffy, offpolicy_is, rl_large_n)
}
"""Method name -> run function, in run order: prefixrl first in each seed (it sets the budget), then the paper's two
headline comparisons, then the rest."""

CORE_METHODS: tuple[str, ...] = ("prefixrl", "rl", "sft_rl", "prefixed_only", "offpolicy_is", "luffy")
"""What fits the full preset's three hours on 2 cores: the paper's headline comparisons (its two ratios), the
back-generalization test and the two off-policy baselines (cheap: like PrefixRL they pay the sourcing, so they train
for PrefixRL's RL FLOPs only). rl_large_n and more_base spend the whole budget on their own training and add about
37 min a seed (session 20: 15 and 22 min)."""

DIAGNOSTICS: dict[str, Callable[[Context, int], Curve]] = {
    f.__name__: f for f in (prefixrl_sound, prefixrl_early, rl_low_lr)
}
"""Runs that are not the paper's methods, run only when named: prefixrl_sound reads the task's oracle (a real task
has none), prefixrl_early cuts where the paper does not, rl_low_lr gives plain RL its own learning rate."""

RUNS: dict[str, Callable[[Context, int], Curve]] = {**METHODS, **DIAGNOSTICS}
"""Every name `BenchSettings.methods` accepts."""
