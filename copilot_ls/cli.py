"""`copilot-ls`: with no subcommand it speaks LSP on stdio (what editors start).

Subcommands live in the modules that own them and expose ``add_arguments(parser)`` and
``run(args) -> int``. This file only wires them. stdout is the LSP channel when serving:
nothing here prints.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# subcommand -> (module, help)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "complete": ("copilot_ls.complete_cmd", "print the completion the editor would show at PATH:LINE:COL"),
    "eval": ("copilot_ls.evaluation.cli", "evaluate completions (humaneval, context)"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="copilot-ls", description="copilot-ls: local inline completions over LSP"
    )
    server = importlib.import_module("copilot_ls.lsp.cli")
    server.add_arguments(parser)  # --stdio (default), --tcp, --port, --log-level ...
    sub = parser.add_subparsers(dest="command")
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        module = importlib.import_module(module_name)
        p = sub.add_parser(name, help=help_text, description=help_text)
        module.add_arguments(p)
        p.set_defaults(_module=module)
    parser.set_defaults(_module=server)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args._module.run(args) or 0)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
