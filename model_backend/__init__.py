"""model_backend: a local Llama-family inference engine and its OpenAI-compatible HTTP server."""

import os

# Before torch loads OpenMP: idle OpenMP threads sleep instead of spinning (libgomp's default), which made a
# 2-thread prefill on 2 shared cores several times slower than 1 thread (docs/performance.md, "Threads and
# OpenMP"). A user who set the variable keeps their choice.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
