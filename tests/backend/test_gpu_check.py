"""The CPU-side parts of scripts/gpu-check.sh (benchmarks/gpu_check.py): the measures' arithmetic, the vocabulary
file that travels to the GPU machine, and the whole check run on the CPU with a tiny shape."""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
# by path, not by putting benchmarks/ on sys.path (its modules would shadow packages for later tests)
_spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "benchmarks" / "gpu_check.py")
assert _spec is not None and _spec.loader is not None
gpu_check = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(gpu_check)


def test_kl_is_zero_for_the_same_logits_and_positive_otherwise() -> None:
    a = torch.randn(5, 100)
    assert torch.allclose(gpu_check.kl_per_position(a, a), torch.zeros(5, dtype=torch.float64), atol=1e-12)
    b = a.clone()
    b[:, 0] += 3.0
    kl = gpu_check.kl_per_position(a, b)
    assert (kl > 0).all()
    # against the definition on one row
    p, q = torch.softmax(a[0].double(), -1), torch.softmax(b[0].double(), -1)
    assert math.isclose(float(kl[0]), float((p * (p / q).log()).sum()), rel_tol=1e-9)


def test_roofline_share() -> None:
    assert gpu_check.roofline_share(3e9, 500, 3e12) == pytest.approx(0.5)
    assert math.isnan(gpu_check.roofline_share(1, 1, 0))


def test_decode_bytes_count_matrices_once_and_skip_the_embedding_lookup() -> None:
    class M(torch.nn.Module):
        def __init__(self, tied: bool) -> None:
            super().__init__()
            self.embed = torch.nn.Embedding(10, 4)
            self.proj = torch.nn.Linear(4, 4, bias=True)  # bias: 1-D, not counted
            self.lm_head = torch.nn.Linear(4, 10, bias=False)
            if tied:
                self.lm_head.weight = self.embed.weight

    assert gpu_check.decode_bytes(M(False), kv_tokens=0, kv_bytes_per_token=0) == (16 + 40) * 4
    assert gpu_check.decode_bytes(M(True), kv_tokens=3, kv_bytes_per_token=8) == (16 + 40) * 4 + 24


@pytest.mark.slow
def test_the_whole_check_runs_on_the_cpu_with_a_tiny_shape(tmp_path: Path) -> None:
    vocab = tmp_path / "vocab.gguf"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "gpu_check.py")]
    subprocess.run([*cmd, "--write-vocab", str(vocab)], check=True, capture_output=True, timeout=120)
    assert 0 < vocab.stat().st_size < 5_000_000  # small enough to travel to the GPU machine
    p = subprocess.run(
        [
            *cmd,
            "--vocab",
            str(vocab),
            "--out",
            str(tmp_path),
            "--device",
            "cpu",
            "--sizes",
            "tiny",
            "--types",
            "F16,Q8_0",
            "--kl-size",
            "tiny",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert p.returncode == 0, p.stderr[-3000:]
    report = json.loads((tmp_path / "gpu-check.json").read_text())
    assert report["kl"]["kl_mean"] < 0.05 and report["kl"]["top1_agreement"] > 0.8
    assert [(r["size"], r["type"]) for r in report["speed"]] == [("tiny", "F16"), ("tiny", "Q8_0")]
    for r in report["speed"]:
        assert r["prefill_tok_s"] > 0 and r["decode_tok_s"] > 0 and 0 < r["roofline_share"] < 10


def test_the_script_says_how_to_use_it() -> None:
    p = subprocess.run(["bash", str(ROOT / "scripts" / "gpu-check.sh")], capture_output=True, text=True)
    assert p.returncode == 2 and "usage: scripts/gpu-check.sh prepare | run" in p.stderr
