"""Command-line options that `copilot-backend serve` and `generate` share (no torch import: the server module
must import without it)."""

from __future__ import annotations

import argparse

SPECULATE_MODES = ("off", "ngram", "draft", "auto")


def add_speculation_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--speculate",
        default="off",
        choices=SPECULATE_MODES,
        help="speculative decoding of lone sequences, never changing the output: ngram (prompt "
        "lookup), draft (--draft-model drafts), auto (n-grams where the text repeats, else "
        "the draft model); default off",
    )
    parser.add_argument(
        "--draft-model",
        default=None,
        help="a small model with the same vocabulary that drafts tokens (GGUF / HF path), e.g. "
        "Qwen2.5-Coder-0.5B for 7B",
    )
