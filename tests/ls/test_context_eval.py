"""`copilot-ls eval context`: case building, metrics, and one end-to-end run against the real backend."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from copilot_ls.context.workspace import Workspace
from copilot_ls.evaluation import context_eval as ce


def make_package(root: Path) -> Path:
    pkg = root / "strlib"
    (pkg / "tests").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "tests" / "__init__.py").write_text("")
    (pkg / "core.py").write_text(
        textwrap.dedent(
            '''\
            def common_prefix(a, b):
                """The longest common prefix."""
                n = 0
                while n < min(len(a), len(b)) and a[n] == b[n]:
                    n += 1
                return a[:n]

            LIMIT = 3
            '''
        )
    )
    test = pkg / "tests" / "test_core.py"
    test.write_text(
        textwrap.dedent(
            """\
            from strlib.core import common_prefix, LIMIT


            def helper():
                return common_prefix("a", "b")


            def test_common_prefix():
                x = 1
                assert common_prefix("flower", "flow") == "flow"
                assert LIMIT == 3
                for a in ["x"]:
                    assert common_prefix(a, a) == a


            def test_short():
                assert common_prefix("", "x") == ""
            """
        )
    )
    return test


def test_cases_in_file(tmp_path: Path) -> None:
    test = make_package(tmp_path)
    cases = ce.cases_in_file(test, Workspace(tmp_path, index=False))
    # only one-line statements in test functions that call a function imported from another file
    assert [(c.line, c.col, c.expected, c.subject) for c in cases] == [
        (9, 4, 'assert common_prefix("flower", "flow") == "flow"', "common_prefix"),
        (16, 4, 'assert common_prefix("", "x") == ""', "common_prefix"),
    ]
    assert all(c.subject_path == str(tmp_path / "strlib" / "core.py") for c in cases)
    doc, line, col = ce.case_document(cases[0])
    assert doc.text.endswith("def test_common_prefix():\n    x = 1\n    ")
    assert (line, col) == (9, 4)


def test_cases_know_whether_the_test_called_the_subject_before(tmp_path: Path) -> None:
    test = make_package(tmp_path)
    test.write_text(
        "from strlib.core import common_prefix\n\n\ndef test_twice():\n"
        "    assert common_prefix('ab', 'a') == 'a'\n    assert common_prefix('', 'x') == ''\n"
    )
    cases = ce.cases_in_file(test, Workspace(tmp_path, index=False))
    assert [(c.line, c.subject_before) for c in cases] == [(4, False), (5, True)]
    assert ce._calls("x = common_prefix (a)", "common_prefix")
    assert not ce._calls("x = self.common_prefix(a)", "common_prefix")
    assert not ce._calls("x = my_common_prefix(a)", "common_prefix")


def test_case_choice_does_not_depend_on_where_the_package_lives(tmp_path: Path) -> None:
    make_package(tmp_path / "a")
    make_package(tmp_path / "elsewhere" / "b")
    here = ce.build_cases([str(tmp_path / "a" / "strlib")], 5, seed=3)
    there = ce.build_cases([str(tmp_path / "elsewhere" / "b" / "strlib")], 5, seed=3)
    assert [(c.id, c.expected) for c in here] == [(c.id, c.expected) for c in there]
    assert len(here) == 2


def test_edit_similarity_and_intervals() -> None:
    assert ce.edit_similarity("abc", "abc") == 1.0
    assert ce.edit_similarity("", "") == 1.0
    assert ce.edit_similarity("", "abc") == 0.0
    assert ce.edit_similarity("kitten", "sitting") == pytest.approx(1 - 3 / 7)
    lo, hi = ce.wilson(5, 10)
    assert lo == pytest.approx(0.2366, abs=1e-3) and hi == pytest.approx(0.7634, abs=1e-3)
    assert ce.wilson(0, 0) == (0.0, 0.0)
    lo, hi = ce.bootstrap_ci([1.0] * 10)
    assert lo == hi == 1.0
    lo, hi = ce.bootstrap_ci([0.0, 1.0] * 50)
    assert 0.35 < lo < 0.5 < hi < 0.65


def test_summary_and_table() -> None:
    results = []
    for i in range(10):
        before = i % 2 == 0
        results.append(
            {
                "case": f"c{i}",
                "arm": "prefix-only",
                "exact": i < 2,
                "edit_similarity": 0.5,
                "prompt_tokens": 100,
                "subject_before": before,
            }
        )
        results.append(
            {
                "case": f"c{i}",
                "arm": "builder",
                "exact": i < 5,
                "edit_similarity": 0.7,
                "prompt_tokens": 200,
                "subject_before": before,
            }
        )
    results.append(
        {"case": "lonely", "arm": "builder", "exact": True, "edit_similarity": 1.0, "prompt_tokens": 1}
    )
    s = ce.summarize(results)
    assert s["cases"] == 10  # only paired cases count
    assert s["arms"]["prefix-only"]["exact_match"] == 0.2 and s["arms"]["builder"]["exact_match"] == 0.5
    assert s["exact_match_lift"] == pytest.approx(0.3)
    assert s["edit_similarity_lift"] == pytest.approx(0.2)
    table = ce.markdown_table(
        s, {"packages": ["x"], "model": "m", "max_prompt_tokens": 512, "max_tokens": 24}
    )
    assert "| builder | 50.0 (" in table and "**30.0 points**" in table and table.startswith("10 cases")
    first = s["strata"]["subject called earlier in the test"]  # cases 0, 2, 4, 6, 8: exact 1/5 -> 3/5
    assert first["cases"] == 5 and first["exact_match_lift"] == pytest.approx(0.4)
    assert "| subject called earlier in the test | 5 | 20.0 → 60.0 | 40.0 (" in table


def test_bad_arguments_are_clear_errors(capsys) -> None:
    import argparse

    parser = argparse.ArgumentParser()
    ce.add_arguments(parser)
    assert ce.run(parser.parse_args(["--packages", "no_such_package_xyz"])) == 2
    assert "none of ['no_such_package_xyz'] is installed" in capsys.readouterr().err
    assert ce.run(parser.parse_args(["--cases", "0"])) == 2


@pytest.mark.e2e
@pytest.mark.slow
def test_one_case_end_to_end(backend_url: str, tmp_path: Path) -> None:
    """The real pipeline pieces against the real backend: one case of a package given by path, both arms."""
    import argparse

    make_package(tmp_path / "src")
    parser = argparse.ArgumentParser()
    ce.add_arguments(parser)
    out = tmp_path / "ev"
    args = parser.parse_args(
        [
            "--backend",
            backend_url,
            "--packages",
            str(tmp_path / "src" / "strlib"),
            "--cases",
            "1",
            "--max-prompt-tokens",
            "160",
            "--max-tokens",
            "8",
            "--out",
            str(out),
        ]
    )
    assert ce.run(args) == 0
    results = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
    assert sorted(r["arm"] for r in results) == ["builder", "prefix-only"]
    assert all(r["prompt_tokens"] <= 160 for r in results)
    builder = next(r for r in results if r["arm"] == "builder")
    assert "under-test" in builder["sources"] or "definition" in builder["sources"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["cases"] == 1 and summary["meta"]["model"]
    assert (out / "summary.md").read_text().startswith("1 cases")


# --- the confidence curve ------------------------------------------------------------------------------------
def _result(exact: bool, mean: float, shown: bool = True) -> dict:
    feats = {
        "mean_logprob": mean,
        "min_logprob": mean * 2,
        "tokens": 5,
        "syntax_errors": 0,
        "static_issues": 0,
        "agreement": 1.0,
    }
    return {
        "arm": "builder",
        "exact": exact,
        "got": "x" if shown else "",
        "shown": shown,
        "features": feats if shown else None,
    }


def test_confidence_curve_and_threshold_choice():
    results = (
        [_result(True, -0.05)] * 3
        + [_result(False, -0.1)]
        + [_result(False, -2.0)] * 4
        + [_result(False, 0.0, shown=False)]
    )
    curve = ce.confidence_curve(results, thresholds=(0.0, 0.5, 0.99))
    assert [c["shown"] for c in curve] == [8, 4, 0]
    assert curve[0]["coverage"] == 8 / 9 and curve[0]["precision"] == 3 / 8
    assert curve[1]["precision"] == 0.75 and curve[1]["coverage"] == 4 / 9
    lo, hi = curve[1]["precision_ci95"]
    assert lo < 0.75 < hi
    assert ce.choose_threshold(curve)["threshold"] == 0.5  # 0.75 >= 2 x 0.375 with 44% shown
    assert ce.choose_threshold(curve, min_coverage=0.5) is None
    assert "| 0.50 **(default)** | 4 / 9 |" in ce.curve_table(curve, 0.5)
    w = ce.fit_weights(results)
    assert w["mean_logprob"] > 0  # likelier text is more often right


def test_fitted_weights_rank_hits_first():
    results = [_result(True, -0.1), _result(True, -0.3), _result(False, -1.0), _result(False, -1.5)]
    w = ce.fit_weights(results)
    scores = [ce.rescore(r, w) for r in results]
    assert min(scores[:2]) > max(scores[2:])


def test_class_member_cases_in_file(tmp_path: Path) -> None:
    """`--case-set class-members`: lines that use a member of a variable the test assigned from a class
    imported from another file (issue 15, item 5); the assignment itself and other lines are not cases."""
    pkg = tmp_path / "geo"
    (pkg / "tests").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "shapes.py").write_text(
        "class Circle:\n    def __init__(self, r):\n        self.r = r\n\n"
        "    def area(self):\n        return 3 * self.r ** 2\n\n\ndef unit():\n    return 1\n"
    )
    test = pkg / "tests" / "test_shapes.py"
    test.write_text(
        textwrap.dedent(
            """\
        from geo.shapes import Circle, unit


        def test_area():
            c = Circle(2)
            u = unit()
            assert c.area() == 12
            assert u.real == 1
            assert c.r == 2
        """
        )
    )
    cases = ce.class_member_cases_in_file(test, Workspace(tmp_path, index=False))
    assert [(c.line, c.expected, c.subject) for c in cases] == [
        (6, "assert c.area() == 12", "Circle"),
        (8, "assert c.r == 2", "Circle"),
    ]
    assert cases[0].subject_path == str(pkg / "shapes.py")
