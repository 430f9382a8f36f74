"""model_backend: a local Llama-family inference engine and its OpenAI-compatible HTTP server."""

import os

# Before torch loads OpenMP: idle OpenMP threads sleep instead of spinning. With spinning (libgomp's default),
# a 2-thread prefill on 2 cores that another process also uses ran 4x SLOWER than 1 thread (85 vs 340 tok/s
# on 512 tokens, measured here), because every parallel op waits for the thread that lost its core. A user
# who set the variable keeps their choice.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
