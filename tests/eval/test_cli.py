"""`copilot-ls eval` dispatch: humaneval argument checks, `eval context` handed to context_eval (or a clear
message when that module is missing)."""

from __future__ import annotations

import sys
import types

from copilot_ls.evaluation import cli


def test_context_is_dispatched_with_its_own_arguments(monkeypatch):
    seen = {}
    fake = types.ModuleType("fake_context_eval")
    fake.add_arguments = lambda p: p.add_argument("--cases", type=int)
    fake.run = lambda args: seen.setdefault("cases", args.cases) and 0
    monkeypatch.setitem(sys.modules, "fake_context_eval", fake)
    monkeypatch.setattr(cli, "CONTEXT_MODULE", "fake_context_eval")
    assert cli.main(["context", "--cases", "7"]) == 0
    assert seen == {"cases": 7}


def test_missing_context_module_says_so(monkeypatch, capsys):
    monkeypatch.setattr(cli, "CONTEXT_MODULE", "copilot_ls.evaluation.no_such_module")
    assert cli.main(["context", "--cases", "7"]) == 2
    assert "context_eval.py is missing" in capsys.readouterr().err


def test_humaneval_argument_errors_exit_2(capsys, tmp_path):
    assert cli.main(["humaneval", "--n", "4", "--k", "1,5", "--out", str(tmp_path)]) == 2
    assert "raise --n" in capsys.readouterr().err
    assert cli.main(["humaneval", "--k", "x", "--out", str(tmp_path)]) == 2
    assert "--k must be" in capsys.readouterr().err
    assert cli.main(["humaneval", "--limit", "0", "--out", str(tmp_path)]) == 2


def test_summary_format():
    text = cli.format_summary(
        {
            "config": {"through": "raw", "temperature": 0.8, "top_p": 0.95, "out": "o"},
            "problems": 2,
            "samples_per_problem": 4,
            "model": {"id": "m"},
            "pass_at_k": {"pass@1": 0.25},
            "pass_at_1_mean_of_samples": 0.25,
            "pass_at_1_top_logprob": 0.5,
            "pass_at_1_greedy": None,
            "plot": "o/p.png",
        }
    )
    assert "2 problems, n=4, through raw, model m" in text
    assert "25.00%" in text and "50.00%" in text and "greedy" not in text


def test_unreachable_backend_does_not_promise_a_resume(capsys, tmp_path):
    """Nothing was generated: the message said 'samples so far are kept in DIR; rerun to resume' for a DIR
    that was never created."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "run"
    assert (
        cli.main(
            [
                "humaneval",
                "--n",
                "1",
                "--k",
                "1",
                "--limit",
                "1",
                "--out",
                str(out),
                "--backend",
                f"http://127.0.0.1:{port}",
            ]
        )
        == 1
    )
    err = capsys.readouterr().err
    assert "cannot reach the backend" in err and "resume" not in err
