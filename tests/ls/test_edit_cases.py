"""The `edits` case set of `copilot-ls eval context` (copilot_ls/evaluation/edit_cases.py): cases where the next
line repeats a pattern written just before elsewhere, their replay as a recent edit, and the edits arm, which
must leave the prompts of the other case sets byte for byte as they are."""

from __future__ import annotations

import argparse
import shutil
import textwrap
from pathlib import Path

import pytest

from copilot_ls.backend import ModelMeta
from copilot_ls.context import PromptBudget
from copilot_ls.evaluation import context_eval as ce
from copilot_ls.evaluation.edit_cases import replay

META = ModelMeta(id=None, context_length=None, fim=None, count_tokens=None)


def make_package(root: Path) -> Path:
    """views.py: an audit line added to the first handler, far above the last one; forms.py (a sibling): a
    `self.clean_email()` call that views.py never makes."""
    pkg = root / "shop"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    filler = "".join(f"# notes, part {i}: nothing here repeats a line of the handlers\n" for i in range(60))
    (pkg / "views.py").write_text(
        "def show(request):\n    data = request.json()\n    audit.record(request.user, 'show')\n"
        "    return data\n" + filler + "\n\ndef edit(request):\n    audit.record(request.user, 'edit')\n"
        "    return data\n\n\ndef save(request, form):\n    form.validate()\n    self_check = form.clean_email()\n"
    )
    (pkg / "forms.py").write_text(
        textwrap.dedent(
            """\
            class Form:
                def validate(self):
                    self.errors = []
                    self_check = self.clean_email()
            """
        )
    )
    return pkg


def test_cases_are_the_repeated_patterns_and_do_not_depend_on_where_the_package_lives(tmp_path: Path) -> None:
    pkg = make_package(tmp_path / "a")
    cases = ce.build_cases([str(pkg)], 10, 0, "edits")
    by_line = {c.expected: c for c in cases if c.path.endswith("views.py")}
    same = by_line["audit.record(request.user, 'edit')"]
    assert same.subject == "audit.record(request.user, 'show')" and same.subject_before
    assert same.edits == ((str(pkg / "views.py"), 2, 2),)
    other = by_line["self_check = form.clean_email()"]
    assert other.edits == ((str(pkg / "forms.py"), 3, 3),) and not other.subject_before
    # not cases: `form.validate()` (no line like it above or in a sibling), `return data` (too short)
    assert not {"form.validate()", "return data"} & {c.expected for c in cases}
    moved = tmp_path / "b" / "deeper"
    shutil.copytree(pkg, moved / "shop")
    again = ce.build_cases([str(moved / "shop")], 10, 0, "edits")
    assert [(c.id, c.expected) for c in again] == [(c.id, c.expected) for c in cases]


def test_the_edits_arm_shows_the_replayed_edit_and_the_builder_arm_does_not(tmp_path: Path) -> None:
    pkg = make_package(tmp_path)
    case = next(
        c for c in ce.build_cases([str(pkg)], 10, 0, "edits") if c.expected.startswith("audit.record")
    )
    budget = PromptBudget(max_prompt_tokens=256)
    builder, *_ = ce.case_prompt(case, "builder", META, budget)
    edits, snap, line, _ = ce.case_prompt(case, "edits", META, budget)
    assert "audit.record(request.user, 'show')" not in builder.prompt
    assert "audit.record(request.user, 'show')" in edits.prompt and "edit" in [s.kind for s in edits.sources]
    assert len(edits.prompt) <= 3 * 256
    other = next(c for c in ce.build_cases([str(pkg)], 10, 0, "edits") if c.edits[0][0].endswith("forms.py"))
    others, regions = replay(other, ce.case_document(other)[0].snapshot())
    assert [o.path for o in others] == [str(pkg / "forms.py")] and regions[0].start_line == 3


def test_without_edits_the_edits_arm_prompt_is_the_builder_prompt_byte_for_byte(tmp_path: Path) -> None:
    """The default case set has no edits: the source must change nothing there (so it cannot hurt it)."""
    from test_context_eval import make_package as make_test_package

    make_test_package(tmp_path)
    packages = [str(tmp_path / "strlib")]
    if ce.package_dirs(["sympy"]):
        packages.append("sympy")
    cases = ce.build_cases(packages, 12, seed=0) + ce.build_cases(packages, 4, 0, "class-members")
    assert cases and not any(c.edits for c in cases)
    for budget in (
        PromptBudget(max_prompt_tokens=1024),
        PromptBudget(max_prompt_tokens=512, keep_in_prefix="none"),
    ):
        for case in cases:
            builder, *_ = ce.case_prompt(case, "builder", META, budget, "signature")
            edits, *_ = ce.case_prompt(case, "edits", META, budget, "signature")
            assert edits.prompt == builder.prompt and edits.sources == builder.sources


def test_edits_summary_compares_the_edits_arm_with_the_builder() -> None:
    results = []
    for i in range(6):
        for arm, exact in (("prefix-only", False), ("builder", i < 1), ("edits", i < 4)):
            results.append(
                {
                    "case": f"c{i}",
                    "arm": arm,
                    "exact": exact,
                    "edit_similarity": 0.5 + exact / 2,
                    "prompt_tokens": 10,
                    "subject_before": i % 2 == 0,
                }
            )
    s = ce.summarize(results, ("builder", "edits"), ce.EDIT_STRATA)
    assert s["cases"] == 6 and s["exact_match_lift"] == pytest.approx(0.5)
    table = ce.markdown_table(
        s, {"packages": ["x"], "model": "m", "max_prompt_tokens": 1, "max_tokens": 1, "case_set": "edits"}
    )
    assert "**edits − builder** | **50.0 points**" in table and "| edit in the same file | 3 |" in table
    assert table.startswith("6 cases from the code of x")


def test_arms_default_to_all_three_for_the_edits_set(tmp_path: Path, capsys) -> None:
    parser = argparse.ArgumentParser()
    ce.add_arguments(parser)
    pkg = make_package(tmp_path)
    args = parser.parse_args(["--case-set", "edits", "--packages", str(pkg), "--list", "--cases", "3"])
    assert ce.run(args) == 0 and args.arms == ["prefix-only", "builder", "edits"]
    assert args.edit_fraction == PromptBudget().edit_fraction == 0.15
    assert len(capsys.readouterr().out.splitlines()) == 3
    assert ce.run(parser.parse_args(["--arms", "builder,nope"])) == 2
