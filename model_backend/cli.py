"""`copilot-backend`: the model backend's command line.

Each subcommand lives in the module that owns it and exposes two functions:
``add_arguments(parser)`` and ``run(args) -> int`` (the exit code). This file only wires them.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# subcommand -> (module, help)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "generate": ("model_backend.generate_cmd", "print completions of a prompt from a local model"),
    "serve": ("model_backend.server", "serve the OpenAI-compatible HTTP API"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="copilot-backend", description="copilot-ls local model backend")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        module = importlib.import_module(module_name)
        module.add_arguments(p)
        p.set_defaults(_module=module)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args._module.run(args) or 0)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
