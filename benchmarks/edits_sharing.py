"""Prefix sharing with recent edits: the share of each prompt's characters that the previous keystroke's prompt
also began with, typing lines key by key at the end of bigfile.py's 20,000-line file, without and with a recent
edit far above the window (a line added to a method 15,000 lines up). In-process, no model, load-independent;
like bigfile.py's `prompt_sharing`, but typed through `Document.apply_change` and recorded in an `EditHistory`
as the LS does.

    .venv/bin/python benchmarks/edits_sharing.py [--lines 30]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT))

from bigfile import big_text, typed_lines  # noqa: E402

from copilot_ls.context import PromptBudget, build_prompt  # noqa: E402
from copilot_ls.context.edits import EditHistory  # noqa: E402
from copilot_ls.documents import Document  # noqa: E402


def sharing(text: str, lines: list[str], far_edit: bool) -> tuple[float, int]:
    """(shared share, prompts that showed an edit snippet)."""
    doc = Document("file:///bench/bigfile/share.py", "python", 1, text)
    history = EditHistory()
    if far_edit:
        first = doc.snapshot().lines()
        i = next(k for k in range(5000, len(first)) if first[k].startswith("    def "))
        at = (i, len(first[i]))
        history.record(doc.uri, *doc.apply_change("\n        log.debug('entered')", at, at))
    budget = PromptBudget(max_prompt_tokens=1450, window_step=0.5)
    shared = total = shown = 0
    prev = None
    for typed in lines:
        for ch in typed + "\n":  # key by key
            snap = doc.snapshot()
            end = (len(snap.lines()) - 1, len(snap.lines()[-1]))
            span = doc.apply_change(ch, end, end)
            if span is not None:
                history.record(doc.uri, *span)
        snap = doc.snapshot()
        line = len(snap.lines()) - 1
        p = build_prompt(snap, line, 0, budget=budget, workspace=None, edits=history.regions())
        shown += any(s.kind == "edit" for s in p.sources)
        if prev is not None:
            shared += len(os.path.commonprefix([prev, p.prompt]))
            total += len(p.prompt)
        prev = p.prompt
    return round(shared / max(1, total), 3), shown


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lines", type=int, default=30, help="lines typed (default 30)")
    args = ap.parse_args()
    text, lines = big_text(20000), typed_lines(args.lines)
    for far in (False, True):
        share, shown = sharing(text, lines, far)
        print(
            f"recent edit far above: {far}: prompt chars shared with the previous prompt {share}, "
            f"prompts with an edit snippet {shown}/{len(lines)}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
