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


SUBCOMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [_add_convert]


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
