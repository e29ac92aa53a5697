"""The `prefixrl` command line: one subcommand per stage of the pipeline.

    prefixrl convert hf-to-megatron SRC DST --tp 2 --pp 1
    prefixrl convert megatron-to-hf SRC DST

Heavy libraries (megatron, vllm) are imported inside the subcommand that needs them, never at import time.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence


def _convert(args: argparse.Namespace) -> None:
    from megatron_ext import convert

    if args.direction == "hf-to-megatron":
        convert.hf_to_megatron(args.src, args.dst, tp=args.tp, pp=args.pp, overwrite=args.overwrite)
    else:
        convert.megatron_to_hf(args.src, args.dst, overwrite=args.overwrite)
    print(f"converted {args.src} -> {args.dst} ({args.direction})")


def _add_convert(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "convert",
        help="convert weights between HF safetensors and Megatron dist checkpoints",
        description="Convert weights. hf-to-megatron loads the HF checkpoint at --tp/--pp (that many local "
        "processes, each reading only its slices) and writes a Megatron distributed checkpoint that loads at any "
        "TP/PP. megatron-to-hf writes HF safetensors + config.json. Destinations are written to a temporary "
        "directory and renamed into place, so a failed conversion leaves nothing half-written.",
    )
    p.add_argument("direction", choices=["hf-to-megatron", "megatron-to-hf"])
    p.add_argument("src", help="source checkpoint directory")
    p.add_argument("dst", help="destination directory (must not exist unless --overwrite)")
    p.add_argument("--tp", type=int, default=1, help="tensor parallel size to load with (hf-to-megatron)")
    p.add_argument("--pp", type=int, default=1, help="pipeline parallel size to load with (hf-to-megatron)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing destination")
    p.set_defaults(func=_convert)


def _demo(args: argparse.Namespace) -> None:
    from dataclasses import replace

    from prefixrl.demo import DemoSettings, run_demo

    settings = DemoSettings()
    if args.quick:
        settings = replace(settings, sft_steps=40, hard_pool=16, source_cap=16, rl_steps=3, prompts_per_step=4,
                           eval_samples=2, select_k=2)
    summary = run_demo(args.out, s=settings)
    _print_summary(summary, args.out)


def _print_summary(summary: dict, out: str) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="PrefixRL demo")
    table.add_column("what")
    table.add_column("value")
    pre, unp = summary["reward_prefixed_first_last"], summary["reward_unprefixed_first_last"]
    rows = [
        ("hard problems / solved by rejection sampling", f"{summary['hard_problems']} / {summary['solved_by_sourcing']}"),
        ("pool: prefixed / unprefixed", " / ".join(map(str, summary["pool_prefixed_unprefixed"]))),
        ("SFT loss first -> last", "{:.3f} -> {:.3f}".format(*summary["sft_loss_first_last"])),
        ("reward/prefixed first -> last steps", f"{pre[0]:.3f} -> {pre[1]:.3f}"),
        ("reward/unprefixed first -> last steps", f"{unp[0]:.3f} -> {unp[1]:.3f}"),
    ]
    for split in ("train_hard_solved", "heldout_hard"):
        b, a = summary["before"][split], summary["after"][split]
        for k in sorted(b, key=int):
            rows.append((f"{split} pass@{k} before -> after", f"{b[k]:.3f} -> {a[k]:.3f}"))
    rows += [("max mismatch/token_mult_prob_error", f"{summary['mismatch_max']:.5f}"),
             ("total FLOPs (sourcing included)", f"{summary['flops'].get('total', 0):.3g}"),
             ("wall time", f"{summary['total_s']:.0f} s")]
    for row in rows:
        table.add_row(*row)
    Console().print(table)
    print(f"metrics: {out}/metrics.jsonl  plots: {out}/curves.png  summary: {out}/summary.json")


def _add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="run the whole PrefixRL pipeline on a tiny model (CPU, about 10 minutes)",
        description="Synthetic task + tokenizer, tiny base model (SFT on Megatron-Core), colocated vLLM engine, "
        "hard-problem selection, rejection sampling, prefix pool, PrefixRL with a weight sync every step, and "
        "unprefixed pass@k before/after. Writes metrics.jsonl, curves.png and summary.json to --out.",
    )
    p.add_argument("--out", default="runs/demo", help="fresh output directory")
    p.add_argument("--quick", action="store_true", help="a seconds-scale smoke version (tests)")
    p.set_defaults(func=_demo)


SUBCOMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [_add_convert, _add_demo]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="prefixrl", description=__doc__.split("\n\n")[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in SUBCOMMANDS:
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        args.func(args)
    except (ValueError, FileExistsError, FileNotFoundError) as exc:
        print(f"prefixrl {args.command}: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
