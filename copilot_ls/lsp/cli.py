"""`copilot-ls` without a subcommand: its options, the logging set-up, and serving the LSP server on stdio or TCP."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from copilot_ls.lsp.server import server


def add_arguments(parser: argparse.ArgumentParser) -> None:
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--stdio", action="store_true", help="speak LSP on stdin/stdout (the default)")
    mode.add_argument("--tcp", action="store_true", help="listen for one LSP client on TCP (for debugging)")
    parser.add_argument("--host", default="127.0.0.1", help="TCP host (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=2087, help="TCP port (default 2087)")
    parser.add_argument(
        "--log-level",
        default="WARNING",
        type=str.upper,
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="stderr log level (default WARNING)",
    )


def protocol_stdout():
    """The real stdout, for the protocol only; fd 1 and sys.stdout then point at stderr, so a stray print (ours,
    a library's, or a C extension's) can never corrupt the LSP stream."""
    sys.stdout.flush()
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return out


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(
        stream=sys.stderr,
        level=getattr(logging, args.log_level, logging.WARNING),
        format="%(asctime)s %(name)s %(levelname)s: %(message)s",
    )
    if args.log_level != "DEBUG":
        for noisy in ("pygls", "httpx", "httpcore"):
            logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLogger().level))
    try:
        if args.tcp:
            server.tcp = True
            server.start_tcp(args.host, args.port)
        else:
            server.start_io(sys.stdin.buffer, protocol_stdout())
    finally:
        server.session.backend.stop()
    # LSP: exit code 0 only after a shutdown request (pygls swallows its own sys.exit(1) in stdio mode)
    return 0 if server.protocol._shutdown else 1
