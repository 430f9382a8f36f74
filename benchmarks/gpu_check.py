"""The CUDA check (scripts/gpu-check.sh runs it on a GPU machine in under 8 minutes; not a test):

1. CUDA logits vs the CPU float32 reference on the same random-weight GGUF (KL divergence per position, top-1
   agreement);
2. decode and prefill tok/s at Qwen2.5-Coder-1.5B's shapes, from an F16 GGUF (bf16 on the GPU) and from Q8_0 /
   Q4_K_M GGUFs (dequantized to bf16 at load);
3. decode as a share of the memory-bandwidth roofline: bytes a decode step must read (every weight matrix once,
   plus the KV cache) x tok/s / the bandwidth of a device-to-device copy measured in the same run.

    python benchmarks/gpu_check.py --vocab VOCAB.gguf --out DIR [--device cuda] [--sizes 1.5b] [--kl-size 0.5b]

The probes are random-weight GGUFs of the real shapes written tensor by tensor (benchmarks/engine.py's
write_probe); VOCAB.gguf supplies the tokenizer (a GPU machine has no default model: `scripts/gpu-check.sh
prepare` writes it here). `--device cpu --sizes tiny --kl-size tiny` runs every step on the CPU in seconds: that
is what the unit test does.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

TINY = (64, 2, 4, 2, 128, True)  # hidden, layers, heads, kv heads, ffn, tied: a shape for the CPU-side test


def engine_bench() -> Any:
    """benchmarks/engine.py (probe writing), loaded by path: putting benchmarks/ on sys.path would let its
    modules shadow packages (benchmarks/kernels.py is not the `kernels` package transformers looks for)."""
    import importlib.util

    mod = sys.modules.get("copilot_bench_engine")
    if mod is None:
        spec = importlib.util.spec_from_file_location(
            "copilot_bench_engine", ROOT / "benchmarks" / "engine.py"
        )
        assert spec is not None and spec.loader is not None
        mod = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = mod
        spec.loader.exec_module(mod)
    return mod


def kl_per_position(ref_logits: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """KL(ref || other) in nats for each row of [positions, vocab] logits."""
    p = torch.log_softmax(ref_logits.double(), dim=-1)
    q = torch.log_softmax(logits.double(), dim=-1)
    return (p.exp() * (p - q)).sum(dim=-1)


def roofline_share(bytes_per_token: float, tok_s: float, bandwidth: float) -> float:
    """Share of the memory bandwidth a decode rate uses: bytes read per token x tokens per second / bytes per s."""
    return bytes_per_token * tok_s / bandwidth if bandwidth > 0 else math.nan


def decode_bytes(model: torch.nn.Module, kv_tokens: int, kv_bytes_per_token: int) -> int:
    """Bytes one decode step reads: every parameter and buffer of 2+ dimensions except the embedding table (a
    lookup reads one row), plus the KV cache of `kv_tokens` positions."""
    embed = getattr(getattr(model, "embed", None), "weight", None)
    tied = embed is not None and getattr(getattr(model, "lm_head", None), "weight", None) is embed
    total = 0
    for name, t in list(model.named_parameters()) + list(model.named_buffers()):
        if t.dim() < 2 or (t is embed and not tied) or "cache" in name:
            continue
        total += t.numel() * t.element_size()
    return total + kv_tokens * kv_bytes_per_token


def copy_bandwidth(device: torch.device, nbytes: int = 1 << 30, repeats: int = 10) -> float:
    """Bytes per second of a device-to-device copy, counting bytes read and written."""
    a = torch.empty(nbytes, dtype=torch.uint8, device=device)
    b = torch.empty_like(a)
    b.copy_(a)
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(repeats):
        b.copy_(a)
    _sync(device)
    return 2 * nbytes * repeats / (time.perf_counter() - t0)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def write_vocab(dst: Path, src: Path | None = None) -> Path:
    """A GGUF with only the tokenizer of `src` (default: the bundled default model), for probes elsewhere."""
    import gguf

    from model_backend.weights import default_model_path

    w = gguf.GGUFWriter(dst, "llama")
    engine_bench().copy_tokenizer(w, src or default_model_path())
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.close()
    return dst


def probe(out: Path, size: str, qtype: str, vocab: Path | None) -> Path:
    path = out / f"probe-{size}-{qtype}.gguf"
    if not path.exists():
        t0 = time.perf_counter()
        engine_bench().write_probe(path, size, qtype, vocab=vocab)
        print(
            f"wrote {path.name} ({path.stat().st_size / 1e9:.2f} GB) in {time.perf_counter() - t0:.0f} s",
            flush=True,
        )
    return path


def load(path: Path, device: str, quantize: str, max_seq: int) -> Any:
    from model_backend.engine import Engine

    return Engine.load(
        str(path),
        device=device,
        quantize=quantize,
        max_batch=1,
        cache_slots=2,
        max_seq_len=max_seq,
        progress=False,
    )


def all_logits(engine: Any, ids: list[int]) -> torch.Tensor:
    x = torch.tensor([ids], dtype=torch.long, device=engine.device)
    with torch.inference_mode():
        return engine.model(x, [0], [0], all_logits=True)[0].float().cpu()


def check_kl(path: Path, device: str, n_tokens: int = 64) -> dict[str, float]:
    gen = torch.Generator().manual_seed(0)
    ref = load(path, "cpu", "none", n_tokens + 8)
    ids = torch.randint(0, ref.config.vocab_size, (n_tokens,), generator=gen).tolist()
    ref_logits = all_logits(ref, ids)
    del ref
    dev = load(path, device, "none" if device == "cuda" else "auto", n_tokens + 8)
    logits = all_logits(dev, ids)
    kl = kl_per_position(ref_logits, logits)
    return {
        "kl_mean": float(kl.mean()),
        "kl_max": float(kl.max()),
        "top1_agreement": float((ref_logits.argmax(-1) == logits.argmax(-1)).double().mean()),
    }


def check_speed(
    path: Path, device: str, prefill_tokens: int = 512, decode_tokens: int = 128
) -> dict[str, float]:
    from model_backend.engine import SamplingParams

    eng = load(path, device, "none" if device == "cuda" else "auto", prefill_tokens + decode_tokens + 8)
    gen = torch.Generator().manual_seed(1)
    vocab = eng.config.vocab_size
    eng.generate(
        torch.randint(0, vocab, (16,), generator=gen).tolist(), SamplingParams(max_tokens=4, temperature=0)
    )
    st = eng.stats
    p0, d0, n0 = st.prefill_seconds, st.decode_seconds, st.decode_steps
    prompt = torch.randint(0, vocab, (prefill_tokens,), generator=gen).tolist()
    params = SamplingParams(max_tokens=decode_tokens, temperature=0.0, token_healing=False)
    eng.eos_ids = frozenset()  # random weights may pick EOS early: decode the full count
    eng.generate(prompt, params)
    prefill_s, decode_s, steps = st.prefill_seconds - p0, st.decode_seconds - d0, st.decode_steps - n0
    cfg = eng.config
    kv_per_token = (
        2 * cfg.n_layers * cfg.n_kv_heads * cfg.head_dim * torch.empty((), dtype=eng.kv_dtype).element_size()
    )
    bytes_per_token = decode_bytes(eng.model, prefill_tokens + decode_tokens // 2, kv_per_token)
    return {
        "prefill_tok_s": prefill_tokens / prefill_s,
        "decode_tok_s": steps / decode_s,
        "decode_bytes_per_token": bytes_per_token,
        "weights": eng.weight_format,
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    engine_bench().PROBE_SHAPES.setdefault("tiny", TINY)
    args.out.mkdir(parents=True, exist_ok=True)
    device = torch.device(args.device)
    report: dict[str, Any] = {
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
    }
    t0 = time.perf_counter()
    report["kl"] = {
        "size": args.kl_size,
        "type": "Q8_0",
        **check_kl(probe(args.out, args.kl_size, "Q8_0", args.vocab), args.device),
    }
    print(f"KL vs CPU fp32 ({args.kl_size} Q8_0): {report['kl']}", flush=True)
    bw = copy_bandwidth(device, nbytes=(1 << 30) if device.type == "cuda" else (64 << 20))
    report["copy_bandwidth_gb_s"] = bw / 1e9
    report["speed"] = []
    for size in args.sizes:
        for qtype in args.types:
            r = {
                "size": size,
                "type": qtype,
                **check_speed(probe(args.out, size, qtype, args.vocab), args.device),
            }
            r["roofline_share"] = roofline_share(r["decode_bytes_per_token"], r["decode_tok_s"], bw)
            report["speed"].append(r)
            print(
                f"{size} {qtype}: prefill {r['prefill_tok_s']:.0f} tok/s, decode {r['decode_tok_s']:.1f} tok/s "
                f"= {100 * r['roofline_share']:.0f}% of {bw / 1e9:.0f} GB/s",
                flush=True,
            )
    report["seconds"] = time.perf_counter() - t0
    return report


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument(
        "--vocab",
        type=Path,
        default=None,
        help="GGUF whose tokenizer the probes copy (default: the bundled default model)",
    )
    ap.add_argument("--out", type=Path, help="folder for the probes and gpu-check.json")
    ap.add_argument(
        "--write-vocab", type=Path, metavar="FILE", help="only write the vocabulary-only GGUF FILE"
    )
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--sizes", type=lambda s: s.split(","), default=["1.5b"])
    ap.add_argument("--types", type=lambda s: s.split(","), default=["F16", "Q8_0", "Q4_K_M"])
    ap.add_argument("--kl-size", default="0.5b")
    args = ap.parse_args(argv)
    if args.write_vocab:
        print(f"wrote {write_vocab(args.write_vocab)}")
        return 0
    if args.out is None:
        ap.error("--out is required")
    if args.device == "cuda" and not torch.cuda.is_available():
        print("gpu_check: torch sees no CUDA device", file=sys.stderr)
        return 2
    report = run(args)
    (args.out / "gpu-check.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
