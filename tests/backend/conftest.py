"""Fixtures for the engine tests: tiny random transformers models saved to disk and loaded through the real
loader (tests/backend/tiny_models.py + weights.load_checkpoint), and one default Engine per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from tiny_models import make_tiny_model

from model_backend.weights import load_checkpoint


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    """tiny_dir(arch, **kw) -> folder of a saved tiny model (cached per arguments for the session)."""
    made: dict[tuple, Path] = {}

    def make(arch: str, **kw) -> Path:
        key = (arch, tuple(sorted(kw.items())))
        if key not in made:
            made[key] = make_tiny_model(arch, tmp_path_factory.mktemp(arch), **kw)
        return made[key]

    return make


@pytest.fixture
def tiny_hf(tiny_dir):
    """tiny_hf(arch, **kw) -> (transformers reference model, ModelConfig, HF-named fp32 tensors)."""
    import transformers

    def make(arch: str, **kw):
        path = tiny_dir(arch, **kw)
        ckpt = load_checkpoint(path)
        ref = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
        return ref, ckpt.config, ckpt.tensors

    return make


@pytest.fixture
def tiny_engine(tiny_dir):
    """tiny_engine(arch, **engine_kw) -> an fp32 Engine on a tiny random model of `arch`."""
    from model_backend.engine import Engine

    def make(arch: str = "llama", **kw):
        kw.setdefault("device", "cpu")
        kw.setdefault("quantize", "none")
        kw.setdefault("max_batch", 4)
        return Engine.load(str(tiny_dir(arch)), progress=False, **kw)

    return make


@pytest.fixture(scope="session")
def default_engine():
    """One Engine on the bundled default model for the whole session (CPU, fast path)."""
    from model_backend.engine import Engine

    torch.set_num_threads(int(os.environ.get("COPILOT_TEST_THREADS", "1")))
    return Engine.load("default", device="cpu", max_batch=8, max_seq_len=2048, progress=False)
