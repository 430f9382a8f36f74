"""The step-based engine: requests -> slots -> batched decode steps -> streamed text.

One thread calls it (the server's worker, or `generate`). Each `step()`:
  1. admits waiting requests (FIFO) while fewer than max_batch sequences run: one prefill per request,
     reusing the longest cached token prefix of any idle cache slot, then copying the prompt's KV into the slots of
     its sibling samples / beams (n samples share one prefill), and samples their first tokens;
  2. runs ONE batched forward over every other running sequence (rows at different positions) and
     samples the next token of each.
The KV cache has `cache_slots` slots (default CACHE_SLOTS_PER_BATCH x max_batch, bounded by memory), more
than can decode at once: a finished request's slot stays idle with its tokens cached, so the prefix cache
holds more sequences (open files) than max_batch, and a new request that needs a slot evicts the least
recently used idle one.
Text is decoded from token bytes (an incremental UTF-8 decoder holds back half characters), stop
strings are matched on that text across token boundaries (text that could begin a stop string is held
back), and token healing backs off a prompt's last token when the tokenizer could have merged it
with what follows, constraining the first generated token to start with the removed bytes.
"""

from __future__ import annotations

import bisect
import codecs
import itertools
import logging
import math
import os
import random
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from model_backend import sampling
from model_backend.loader import resolve_device  # noqa: F401 (part of this module's API)
from model_backend.model import Transformer, pack_linear, pack_targets

log = logging.getLogger(__name__)

PREFILL_CHUNK = 512  # prompt tokens per forward during prefill (bounds the attention scratch memory)
# prompt tokens prefilled per engine step while other sequences decode, so a long new prompt does not stall their
# streams for its whole prefill (chunk size barely changes prefill speed here: 576-597 tok/s for 128-512 tokens)
INTERLEAVE_CHUNK = 128
DEFAULT_MAX_SEQ = 4096
MAX_HEAL_TOKENS = 3  # token healing backs off at most this many prompt tokens
CACHE_SLOTS_PER_BATCH = 4  # default KV-cache slots = this x max_batch (prefix cache across requests)
CACHE_MEMORY_FRACTION = 0.5  # the default never lets a full KV cache exceed this share of device memory


# -- the public data types (docs/architecture.md) -----------------------------------------------------------

@dataclass
class SamplingParams:
    max_tokens: int = 16
    temperature: float = 1.0  # 0 -> greedy
    top_p: float = 1.0
    top_k: int = 0  # 0 -> off
    n: int = 1  # candidates returned
    best_of: int | None = None  # generate best_of, return the n with the highest mean log-prob
    beam_width: int = 1  # > 1 -> beam search (length-normalised)
    stop: list[str] = field(default_factory=list)
    seed: int | None = None
    token_healing: bool = True
    top_logprobs: int = 0  # > 0: each generated token also carries the log-probs of the most likely tokens

    def validate(self) -> None:
        if self.max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {self.max_tokens}")
        if self.temperature < 0 or not math.isfinite(self.temperature):
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")
        if self.n < 1:
            raise ValueError(f"n must be >= 1, got {self.n}")
        if self.best_of is not None and self.best_of < self.n:
            raise ValueError(f"best_of ({self.best_of}) must be >= n ({self.n})")
        if self.beam_width < 1:
            raise ValueError(f"beam_width must be >= 1, got {self.beam_width}")
        if self.beam_width > 1 and self.n > self.beam_width:
            raise ValueError(f"n ({self.n}) must be <= beam_width ({self.beam_width})")
        if not 0 <= self.top_logprobs <= 20:
            raise ValueError(f"top_logprobs must be in [0, 20], got {self.top_logprobs}")
        if any(not isinstance(s, str) or s == "" for s in self.stop):
            raise ValueError("stop strings must be non-empty strings")

    @property
    def n_sequences(self) -> int:
        if self.beam_width > 1:
            return self.beam_width
        return self.best_of or self.n


@dataclass
class Candidate:
    index: int
    text: str
    token_ids: list[int]
    token_logprobs: list[float]
    tokens: list[str]  # the text of each token
    mean_logprob: float  # over token_logprobs plus the end-of-sequence token when one ended it
    finish_reason: str  # "stop" | "length" | "cancelled"
    # per token: the top_logprobs most likely (text, log-prob) at that step, most likely first; None when not asked
    top_logprobs: list[list[tuple[str, float]]] | None = None


@dataclass
class StepOutput:
    request_id: str
    index: int
    delta: str  # new text (already stop-trimmed; may be "" while a stop string is pending)
    finished: bool
    candidate: Candidate | None  # set when finished


@dataclass
class EngineStats:
    requests: int = 0
    prompt_tokens: int = 0
    prefill_tokens: int = 0  # prompt tokens actually computed (the rest came from the prefix cache)
    prefix_cache_hits: int = 0
    prefix_tokens_reused: int = 0
    shared_prefills: int = 0  # sibling samples / beams that copied a prompt's KV instead of recomputing
    generated_tokens: int = 0
    decode_steps: int = 0
    prefill_seconds: float = 0.0
    decode_seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# -- internal state ------------------------------------------------------------------------------------------

@dataclass
class _Seq:
    index: int
    slot: int
    pending: int | None = None  # sampled, not yet in the KV cache
    ids: list[int] = field(default_factory=list)  # generated (an ending EOS included)
    logprobs: list[float] = field(default_factory=list)
    top: list[list[tuple[int, float]]] = field(default_factory=list)  # per token, when top_logprobs > 0
    text: str = ""
    emitted: int = 0  # characters of `text` already streamed
    strip: bytes = b""  # healed bytes still to drop from the output
    healed: bytes = b""  # all the bytes token healing removed from the prompt
    decoder: Any = None
    finish_reason: str | None = None
    ended_by_eos: bool = False

    def total(self) -> float:
        return sum(self.logprobs)


@dataclass
class _Request:
    id: str
    params: SamplingParams
    prompt: list[int]
    heal: bytes
    allowed: torch.Tensor | None
    generator: torch.Generator
    seqs: list[_Seq] = field(default_factory=list)
    beams_finished: list[_Seq] = field(default_factory=list)
    slots: list[int] = field(default_factory=list)
    fresh: bool = True  # its first tokens were sampled during the current step (no decode step for it yet)
    prefilled: int = -1  # prompt tokens in its main slot's cache; -1 before admission; len(prompt) when done

    @property
    def streaming(self) -> bool:
        p = self.params
        return p.beam_width == 1 and (p.best_of is None or p.best_of == p.n)


def default_cache_slots(max_batch: int, bytes_per_slot: int, device: torch.device) -> int:
    """CACHE_SLOTS_PER_BATCH x max_batch, fewer (never below max_batch) when the full cache would take more
    than CACHE_MEMORY_FRACTION of the device's memory (CUDA: free memory now; CPU: physical RAM)."""
    want = CACHE_SLOTS_PER_BATCH * max_batch
    try:
        if device.type == "cuda":
            budget = torch.cuda.mem_get_info(device)[0]
        else:
            budget = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError, RuntimeError):
        return want
    fit = int(budget * CACHE_MEMORY_FRACTION) // max(1, bytes_per_slot)
    return max(max_batch, min(want, fit))


def common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def stop_holdback(text: str, stops: list[str]) -> int:
    """Length of the longest suffix of `text` that is a proper prefix of some stop string."""
    best = 0
    for s in stops:
        for k in range(min(len(s) - 1, len(text)), best, -1):
            if text.endswith(s[:k]):
                best = k
                break
    return best


def find_stop(text: str, stops: list[str]) -> int:
    """Index where the earliest stop string starts in `text`, or -1."""
    hits = [i for i in (text.find(s) for s in stops) if i >= 0]
    return min(hits) if hits else -1


class Engine:
    def __init__(self, model: Transformer, tokenizer: Any, config: Any, *, device: torch.device,
                 max_batch: int = 8, max_seq_len: int | None = None, prefill_threads: int | None = None,
                 decode_threads: int | None = 1, cache_slots: int | None = None,
                 kv_dtype: torch.dtype | None = None, prefill_interleave: int = INTERLEAVE_CHUNK) -> None:
        """prefill_threads / decode_threads (CPU): torch intra-op threads for each phase; None = torch's setting
        when the engine is made. Decode defaults to ONE thread: its ops are small, and with 2 threads on 2 cores any other busy
        process makes OpenMP's threads wait for each other (measured here at load average 8: 0.5-0.8 tok/s
        with 2 threads against 14-16 tok/s with 1).

        cache_slots: KV-cache slots (>= max_batch). Only max_batch sequences decode at once; the other slots
        keep idle sequences' KV as a prefix cache (LRU). Each slot costs `kv_bytes_per_slot` bytes once
        filled to max_seq_len (the cache is allocated uninitialised and zeroed lazily per slot, so on the CPU
        unused slots and positions take no memory). None: CACHE_SLOTS_PER_BATCH x max_batch, lowered (not
        below max_batch) so the whole cache fits CACHE_MEMORY_FRACTION of the device's memory.

        kv_dtype: the KV cache's dtype; None = the model's (from_checkpoint picks fp16 for packed CPU weights).
        prefill_interleave: while sequences decode, prefill at most this many prompt tokens per step (shortest
        remaining prompt first) between their decode steps (0: every admitted prompt is prefilled whole before the
        step's decode)."""
        self.model = model
        self.kv_dtype = kv_dtype or model.embed.weight.dtype
        if prefill_interleave < 0:
            raise ValueError(f"prefill_interleave must be >= 0, got {prefill_interleave}")
        self.prefill_interleave = prefill_interleave
        self.prefill_threads = prefill_threads or torch.get_num_threads()
        self.decode_threads = decode_threads or self.prefill_threads
        self.tokenizer = tokenizer
        self.config = config
        self.device = device
        self.max_batch = max_batch
        self.max_seq_len = min(max_seq_len or DEFAULT_MAX_SEQ, config.context_length)
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        if cache_slots is None:
            cache_slots = default_cache_slots(max_batch, self.kv_bytes_per_slot(model), device)
        elif cache_slots < max_batch:
            raise ValueError(f"cache_slots ({cache_slots}) must be >= max_batch ({max_batch})")
        self.cache_slots = cache_slots
        self.stats = EngineStats()
        self.weight_format = "float32"
        self._packing: list[tuple[Any, str, Any]] = []
        self._blocks: dict[str, Any] | None = None  # the "blocks" format's GGUF blocks, until packed
        model.setup_caches(cache_slots, self.max_seq_len, dtype=self.kv_dtype)
        self.eos_ids = frozenset(getattr(tokenizer, "eos_ids", ()) or ())
        specials = getattr(tokenizer, "special", {}) or {}
        bos = getattr(tokenizer, "bos_id", None)
        self._no_heal = set(self.eos_ids) | set(specials.values()) | ({bos} if bos is not None else set())
        self._slot_tokens: list[list[int]] = [[] for _ in range(cache_slots)]
        self._slot_owner: list[str | None] = [None] * cache_slots
        self._slot_used: list[int] = [0] * cache_slots
        self._clock = itertools.count(1)
        self._waiting: deque[_Request] = deque()
        self._running: dict[str, _Request] = {}
        self._vocab_index: tuple[list[bytes], list[int]] | None = None
        self._heal_cache: dict[bytes, torch.Tensor] = {}
        self._token_text: dict[int, str] = {}

    def kv_bytes_per_slot(self, model: Transformer | None = None) -> int:
        """Bytes of K and V one cache slot holds when filled to max_seq_len."""
        cfg = self.config
        dtype = self.kv_dtype
        elem = torch.empty((), dtype=dtype).element_size()
        return 2 * cfg.n_layers * cfg.n_kv_heads * self.max_seq_len * cfg.head_dim * elem

    # -- construction ------------------------------------------------------------------------------------------
    @classmethod
    def load(cls, model: str = "default", *, device: str = "auto", max_batch: int = 8,
             max_seq_len: int | None = None, quantize: str = "auto", rope_theta: float | None = None,
             rope_scaling: float | None = None, dtype: str | None = None, cache_dir: Any = None,
             progress: bool = True, pack_in_background: bool = False, **engine_kw: Any) -> Engine:
        """Load a checkpoint (see weights.resolve_model) onto `device` (model_backend/loader.py).

        quantize: "auto" (on CPU "blocks" for GGUF / bf16 / fp16 checkpoints where the kernels run, else "fp16";
        none on CUDA), "blocks" (every matrix as stored, for prompts and decode: model_backend/cpu_kernels.py),
        "fp16", "int8" (fbgemm packs of the dense model, see model.quantize_linears) or "none" (plain fp32 / the
        CUDA dtype). dtype: None picks fp32 on CPU, bf16 (fp16 without bf16 support) on CUDA. rope_theta /
        rope_scaling override the checkpoint's. pack_in_background (CPU fp16/int8, opt-in): return before the
        weights are packed; layers switch to their packed form between steps as they become ready. Faster cold
        start, but requests served while packing run partly in fp32, so their greedy output may differ (near-ties)
        from later ones. engine_kw: prefill_threads, decode_threads, cache_slots (see __init__).
        """
        from model_backend.loader import load_engine

        return load_engine(cls, model, device=device, max_batch=max_batch, max_seq_len=max_seq_len,
                           quantize=quantize, rope_theta=rope_theta, rope_scaling=rope_scaling, dtype=dtype,
                           cache_dir=cache_dir, progress=progress, pack_in_background=pack_in_background,
                           **engine_kw)

    @classmethod
    def from_checkpoint(cls, ckpt: Any, *, device: torch.device | str = "cpu", max_batch: int = 8,
                        max_seq_len: int | None = None, quantize: str = "auto",
                        rope_theta: float | None = None, rope_scaling: float | None = None,
                        dtype: str | None = None, pack_in_background: bool = False,
                        **engine_kw: Any) -> Engine:
        from model_backend.loader import engine_from_checkpoint

        return engine_from_checkpoint(cls, ckpt, device=device, max_batch=max_batch, max_seq_len=max_seq_len,
                                      quantize=quantize, rope_theta=rope_theta, rope_scaling=rope_scaling,
                                      dtype=dtype, pack_in_background=pack_in_background, **engine_kw)

    # -- background weight packing (cold start) ------------------------------------------------------------------
    def _start_packing(self, fmt: str) -> None:
        """Pack the Linear layers on worker threads; step() swaps each packed layer in when it is ready.
        Until then a layer runs as plain fp32 (same results up to fp16 rounding), so the engine serves at once."""
        from concurrent.futures import ThreadPoolExecutor

        pool = ThreadPoolExecutor(max(1, min(8, os.cpu_count() or 1)), thread_name_prefix="pack")
        blocks = self._blocks or {}
        self._packing = [(parent, name, pool.submit(pack_linear, child, fmt, blocks.get(qual)))
                         for parent, name, child, qual in pack_targets(self.model, fmt)]
        pool.shutdown(wait=False)

    def _install_packed(self, wait: bool = False) -> None:
        if not self._packing:
            return
        waiting = []
        for parent, name, fut in self._packing:
            if wait or fut.done():
                setattr(parent, name, fut.result())
            else:
                waiting.append((parent, name, fut))
        self._packing = waiting

    def wait_packed(self) -> None:
        """Block until every layer is packed and installed (benchmarks and tests want the steady state)."""
        self._install_packed(wait=True)

    @property
    def packing_done(self) -> bool:
        return not self._packing

    # -- the API ---------------------------------------------------------------------------------------------
    def add_request(self, request_id: str, prompt: str | list[int], params: SamplingParams) -> None:
        params.validate()
        if request_id in self._running or any(r.id == request_id for r in self._waiting):
            raise ValueError(f"request id {request_id!r} is already in use")
        if params.n_sequences > self.max_batch:
            raise ValueError(f"request needs {params.n_sequences} sequences but the engine has "
                             f"{self.max_batch} slots (max_batch)")
        ids = self._prompt_ids(prompt)
        heal, allowed = b"", None
        if params.token_healing:
            ids, heal, allowed = self._heal(ids)
        seed = params.seed if params.seed is not None else random.getrandbits(63)
        gen = torch.Generator(device=self.device)
        gen.manual_seed(seed)
        self._waiting.append(_Request(request_id, params, ids, heal, allowed, gen))
        self.stats.requests += 1

    def has_unfinished(self) -> bool:
        return bool(self._waiting or self._running)

    def is_unfinished(self, request_id: str) -> bool:
        return request_id in self._running or any(r.id == request_id for r in self._waiting)

    def abort(self, request_id: str) -> None:
        self._waiting = deque(r for r in self._waiting if r.id != request_id)
        req = self._running.pop(request_id, None)
        if req is not None:
            self._free(req)

    def step(self) -> list[StepOutput]:
        self._install_packed()
        out: list[StepOutput] = []
        for req in self._running.values():
            req.fresh = False
        # FIFO admission: a request starts when its sequences fit the decode batch (max_batch); there is
        # always an idle cache slot for each, since cache_slots >= max_batch
        while self._waiting and (self.cache_slots - self._slot_owner.count(None)
                                 + self._waiting[0].params.n_sequences <= self.max_batch):
            req = self._waiting.popleft()
            self._running[req.id] = req
            self._start(req)
        # prefill, shortest remaining prompt first; while sequences decode, at most `prefill_interleave` tokens
        # per step, so they get a token between chunks (measured: a running stream's longest stall behind a
        # 2,000-token prompt 4.1 s -> 0.33 s) and a warm keystroke (a few new tokens) overtakes a cold prompt.
        # When nothing decodes, everything at once (capping that too cost 15% throughput with 16 clients).
        budget = None
        if self.prefill_interleave and any(q.pending is not None and q.finish_reason is None
                                           for r in self._running.values() for q in r.seqs):
            budget = self.prefill_interleave
        prefilling = sorted((r for r in self._running.values() if r.prefilled < len(r.prompt)),
                            key=lambda r: len(r.prompt) - r.prefilled)
        for req in prefilling:
            if budget is not None and budget <= 0:
                break
            logits, used = self._prefill(req, budget)
            if budget is not None:
                budget -= used
            if logits is not None:
                out.extend(self._first_tokens(req, logits))
        out.extend(self._decode())
        return out

    def generate(self, prompt: str | list[int], params: SamplingParams | None = None) -> list[Candidate]:
        params = params or SamplingParams()
        rid = f"generate-{next(self._clock)}"
        self.add_request(rid, prompt, params)
        done: dict[int, Candidate] = {}
        try:
            while self.is_unfinished(rid):
                for o in self.step():
                    if o.request_id == rid and o.candidate is not None:
                        done[o.index] = o.candidate
        except BaseException:
            self.abort(rid)
            raise
        return [done[i] for i in sorted(done)]

    # -- prompts, token healing ---------------------------------------------------------------------------------
    def _prompt_ids(self, prompt: str | list[int]) -> list[int]:
        tok = self.tokenizer
        if isinstance(prompt, str):
            ids = list(tok.encode(prompt))
            if getattr(tok, "add_bos", False) and tok.bos_id is not None:
                ids = [tok.bos_id] + ids
        else:
            ids = [int(t) for t in prompt]
            bad = [t for t in ids if not 0 <= t < self.config.vocab_size]
            if bad:
                raise ValueError(f"prompt token ids out of range [0, {self.config.vocab_size}): {bad[:5]}")
        if not ids:
            raise ValueError("empty prompt: the model needs at least one token to condition on")
        if len(ids) >= self.max_seq_len:
            raise ValueError(f"prompt is {len(ids)} tokens but the context holds {self.max_seq_len} "
                             f"(model context {self.config.context_length}); shorten the prompt")
        return ids

    def _vocab(self) -> tuple[list[bytes], list[int]]:
        if self._vocab_index is None:
            n = min(self.tokenizer.vocab_size, self.config.vocab_size)
            pairs = sorted((self.tokenizer.token_bytes(i), i) for i in range(n) if i not in self._no_heal)
            self._vocab_index = ([b for b, _ in pairs], [i for _, i in pairs])
        return self._vocab_index

    def tokens_starting_with(self, prefix: bytes) -> list[int]:
        keys, ids = self._vocab()
        lo = bisect.bisect_left(keys, prefix)
        hi = lo
        while hi < len(keys) and keys[hi].startswith(prefix):
            hi += 1
        return ids[lo:hi]

    def _heal(self, ids: list[int]) -> tuple[list[int], bytes, torch.Tensor | None]:
        """Token healing: back off the prompt's last token(s) when the tokenizer could have merged them with
        what follows (a bare "\n" before an indent, half an identifier).

        The last token is backed off when some longer token starts with its bytes; the one before it too
        (up to MAX_HEAL_TOKENS) when a single token can still cover both. The first generated token must
        then start with all the removed bytes (`allowed`, `healing_options`), and the removed bytes are cut
        from the output.
        """
        if len(ids) < 2 or ids[-1] in self._no_heal:
            return ids, b"", None
        removed = self.tokenizer.token_bytes(ids[-1])
        if not removed or len(self.tokens_starting_with(removed)) <= 1:
            return ids, b"", None
        k = 1
        while k < MAX_HEAL_TOKENS and len(ids) > k + 1 and ids[-k - 1] not in self._no_heal:
            wider = self.tokenizer.token_bytes(ids[-k - 1]) + removed
            if not self.tokens_starting_with(wider):
                break
            removed, k = wider, k + 1
        return ids[:-k], removed, torch.tensor(self.tokens_starting_with(removed), device=self.device)

    def healing_options(self, pending: bytes) -> torch.Tensor:
        """Tokens that may come next while `pending` healed bytes are not yet regenerated: those starting with
        all of them."""
        opts = self._heal_cache.get(pending)
        if opts is None:
            opts = torch.tensor(self.tokens_starting_with(pending), device=self.device)
            self._heal_cache[pending] = opts
        return opts

    # -- slots ---------------------------------------------------------------------------------------------------
    def _free(self, req: _Request) -> None:
        for s in req.slots:
            if self._slot_owner[s] == req.id:
                self._slot_owner[s] = None
                self._slot_used[s] = next(self._clock)
        req.slots = []

    def _pick_slots(self, req: _Request) -> tuple[list[int], int, int | None]:
        """Slots for a request and how to reuse the cache: (slots, shared prefix length, slot to copy it from).

        The prefix comes from the idle slot sharing the longest prefix with the prompt. The request prefills
        in that slot when the prompt continues most of what it holds (the next keystroke: the slot holds the
        previous prompt + its completion); when the shared part is shorter than what would be overwritten (two
        files that only begin alike), it prefills in the least recently used idle slot after copying the
        shared prefix there, so the other sequence stays cached (if enough idle slots remain for all its samples). Sibling samples / beams take the next least
        recently used idle slots."""
        free = [s for s in range(self.cache_slots) if self._slot_owner[s] is None]
        best, best_len = None, 0
        for s in free:
            c = common_prefix(self._slot_tokens[s], req.prompt)
            if c > best_len:
                best, best_len = s, c
        lru = sorted(free, key=lambda s: self._slot_used[s])
        copy_from = None
        if best is None:
            best = lru[0]
        elif (2 * best_len < len(self._slot_tokens[best]) and lru[0] != best
              and len(free) > req.params.n_sequences):  # copy_from stays idle: the samples still need n slots
            best, copy_from = lru[0], best
        rest = [s for s in lru if s != best and s != copy_from][: req.params.n_sequences - 1]
        return [best] + rest, best_len, copy_from

    def _threads(self, n: int) -> None:
        if self.device.type == "cpu" and torch.get_num_threads() != n:
            torch.set_num_threads(n)

    def _forward(self, tokens: list[list[int]], start: list[int], slots: list[int]) -> torch.Tensor:
        self._threads(self.prefill_threads if len(tokens[0]) > 1 else self.decode_threads)
        x = torch.tensor(tokens, dtype=torch.long, device=self.device)
        return self.model(x, start, slots)

    # -- admission: prefill + first tokens ---------------------------------------------------------------------------
    def _start(self, req: _Request) -> None:
        """Admission: slots, prefix reuse (copied in when it comes from another slot), stats. Prefill follows in
        `_prefill`, over one or more steps."""
        slots, reuse, copy_from = self._pick_slots(req)
        for s in slots:
            self._slot_owner[s] = req.id
        req.slots = slots
        ids = req.prompt
        reuse = min(reuse, len(ids) - 1)  # always compute >= 1 token: its logits start the generation
        if copy_from is not None and reuse > 0:  # the shared prefix moves to this request's slot
            self.model.copy_slot(copy_from, slots[0], reuse)
            self._slot_used[copy_from] = next(self._clock)
        if reuse > 0:
            self.stats.prefix_cache_hits += 1
            self.stats.prefix_tokens_reused += reuse
        self.stats.prompt_tokens += len(ids)
        self.stats.prefill_tokens += len(ids) - reuse
        self._slot_tokens[slots[0]] = list(ids[:reuse])  # what the main slot holds, kept true chunk by chunk
        for s in slots[1:]:
            self._slot_tokens[s] = []
        req.prefilled = reuse

    def _prefill(self, req: _Request, budget: int | None) -> tuple[torch.Tensor | None, int]:
        """Prefill up to `budget` more prompt tokens (None: all) into the request's main slot. Returns the last
        position's logits once the whole prompt is in (else None) and the tokens computed."""
        t0 = time.perf_counter()
        ids, main = req.prompt, req.slots[0]
        begin = req.prefilled
        end = len(ids) if budget is None else min(len(ids), begin + budget)
        logits = None
        for a in range(req.prefilled, end, PREFILL_CHUNK):
            chunk = ids[a:min(a + PREFILL_CHUNK, end)]
            logits = self._forward([chunk], [a], [main])
            req.prefilled = a + len(chunk)
            self._slot_tokens[main] = list(ids[:req.prefilled])
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        self.stats.prefill_seconds += time.perf_counter() - t0
        return (logits if req.prefilled == len(ids) else None), end - begin

    def _first_tokens(self, req: _Request, logits: torch.Tensor) -> list[StepOutput]:
        """The whole prompt is in: share it with sibling samples and sample every sequence's first token."""
        ids, slots = req.prompt, req.slots
        main = slots[0]
        for s in slots[1:] if req.params.beam_width == 1 else ():  # n samples share the one prefill
            self.model.copy_slot(main, s, len(ids))
            self._slot_tokens[s] = list(ids)
            self.stats.shared_prefills += 1
        req.fresh = True
        req.seqs = [self._new_seq(req, i, s) for i, s in enumerate(slots)]
        lp = sampling.log_probs(logits[0])
        if req.params.beam_width > 1:
            return self._beam_step(req, lp.unsqueeze(0), [req.seqs[0]])
        out = []
        for seq in req.seqs:
            token, logprob = self._sample(req, seq, logits[0], lp)
            out.extend(self._accept(req, seq, token, logprob, self._top(req, lp)))
        return out + self._finish_if_done(req)

    def _new_seq(self, req: _Request, index: int, slot: int) -> _Seq:
        return _Seq(index=index, slot=slot, strip=req.heal, healed=req.heal,
                    decoder=codecs.getincrementaldecoder("utf-8")(errors="replace"))

    def _sample(self, req: _Request, seq: _Seq, logits: torch.Tensor, lp: torch.Tensor) -> tuple[int, float]:
        p = req.params
        # healed bytes still to regenerate: the token must start with all of them (a piece of them, e.g. ")"
        # of a healed "):", puts the model off its own tokenization: "def f(n):" went on ":**", for greedy
        # and for 4 of 8 samples)
        allowed = self.healing_options(seq.strip) if seq.strip else None
        if allowed is not None:
            constrained = sampling.apply_allowed(logits, allowed)
        else:
            constrained = logits
        if p.temperature <= 0:
            token = int(torch.argmax(constrained).item())
        else:
            cand, probs = sampling.candidate_set(constrained, p.temperature, p.top_k, p.top_p)
            token = int(cand[torch.multinomial(probs, 1, generator=req.generator)].item())
        return token, float(lp[token].item())

    # -- one decode step for every running sequence --------------------------------------------------------------
    def _decode(self) -> list[StepOutput]:
        rows = [(req, seq) for req in self._running.values() if not req.fresh
                for seq in req.seqs if seq.pending is not None and seq.finish_reason is None]
        if not rows:
            return []
        rows.sort(key=lambda r: r[1].slot)
        t0 = time.perf_counter()
        tokens = [[seq.pending] for _, seq in rows]
        start = [len(self._slot_tokens[seq.slot]) for _, seq in rows]
        slots = [seq.slot for _, seq in rows]
        logits = self._forward(tokens, start, slots)
        for _, seq in rows:
            self._slot_tokens[seq.slot].append(seq.pending)  # type: ignore[arg-type]
            seq.pending = None
        lps = sampling.log_probs(logits)
        out: list[StepOutput] = []
        by_req: dict[str, list[int]] = {}
        for i, (req, _) in enumerate(rows):
            by_req.setdefault(req.id, []).append(i)
        for rid, idx in by_req.items():
            req = self._running[rid]
            if req.params.beam_width > 1:
                out.extend(self._beam_step(req, lps[idx], [rows[i][1] for i in idx]))
                continue
            # samples draw from the request's one generator in sample order, not in slot order (the slots a
            # request gets depend on the cache), so the same seed gives the same samples
            for i in sorted(idx, key=lambda i: rows[i][1].index):
                seq = rows[i][1]
                token, logprob = self._sample(req, seq, logits[i], lps[i])
                out.extend(self._accept(req, seq, token, logprob, self._top(req, lps[i])))
            out.extend(self._finish_if_done(req))
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        self.stats.decode_seconds += time.perf_counter() - t0
        self.stats.decode_steps += 1
        return out

    # -- text, stop strings, finishing ---------------------------------------------------------------------------
    def token_text(self, token: int) -> str:
        text = self._token_text.get(token)
        if text is None:
            text = self.tokenizer.token_bytes(token).decode("utf-8", errors="replace")
            self._token_text[token] = text
        return text

    def _push_text(self, seq: _Seq, token: int) -> None:
        data = self.tokenizer.token_bytes(token)
        if seq.strip:
            n = min(len(seq.strip), len(data))
            data, seq.strip = data[n:], seq.strip[n:]
        seq.text += seq.decoder.decode(data)

    @staticmethod
    def _top(req: _Request, lp: torch.Tensor) -> list[tuple[int, float]] | None:
        """The request's top_logprobs most likely tokens of one step's log-probs (unconstrained), or None."""
        k = req.params.top_logprobs
        if k <= 0:
            return None
        vals, ids = torch.topk(lp, k)
        return list(zip(ids.tolist(), vals.tolist(), strict=True))

    def _accept(self, req: _Request, seq: _Seq, token: int, logprob: float,
                top: list[tuple[int, float]] | None = None) -> list[StepOutput]:
        """Record a sampled token for a sampling sequence; return its stream output."""
        p = req.params
        seq.ids.append(token)
        seq.logprobs.append(logprob)
        if top is not None:
            seq.top.append(top)
        self.stats.generated_tokens += 1
        if token in self.eos_ids:
            seq.ended_by_eos = True
            seq.text += seq.decoder.decode(b"", final=True)
            self._end(seq, "stop")
        else:
            self._push_text(seq, token)
            cut = find_stop(seq.text, p.stop) if p.stop else -1
            if cut >= 0:
                seq.text = seq.text[:cut]
                self._end(seq, "stop")
            elif len(seq.ids) >= p.max_tokens or len(req.prompt) + len(seq.ids) >= self.max_seq_len:
                self._end(seq, "length")
            else:
                seq.pending = token
        if seq.finish_reason is None:
            safe = len(seq.text) - (stop_holdback(seq.text, p.stop) if p.stop else 0)
        else:
            safe = len(seq.text)
        delta = seq.text[seq.emitted:max(safe, seq.emitted)]
        seq.emitted = max(safe, seq.emitted)
        if not req.streaming:
            return []
        cand = self._candidate(seq, seq.index) if seq.finish_reason else None
        return [StepOutput(req.id, seq.index, delta, seq.finish_reason is not None, cand)]

    def _end(self, seq: _Seq, reason: str) -> None:
        if reason == "length":
            tail = seq.decoder.decode(b"", final=True)
            seq.text += tail
        seq.finish_reason = reason
        seq.pending = None

    def _token_texts(self, ids: list[int], healed: bytes) -> list[str]:
        """The text of each token; the first token(s) lose the healed bytes, which the prompt already has."""
        if not healed:
            return [self.token_text(t) for t in ids]
        out = []
        for t in ids:
            data = self.tokenizer.token_bytes(t)
            n = min(len(healed), len(data))
            data, healed = data[n:], healed[n:]
            out.append(data.decode("utf-8", errors="replace"))
        return out

    def _candidate(self, seq: _Seq, index: int) -> Candidate:
        ids, lps = list(seq.ids), list(seq.logprobs)
        mean = sum(lps) / len(lps) if lps else 0.0
        if seq.ended_by_eos:
            ids, lps = ids[:-1], lps[:-1]
        top = None
        if seq.top:
            top = [[(self.token_text(t), v) for t, v in step] for step in seq.top[: len(ids)]]
        return Candidate(index=index, text=seq.text, token_ids=ids, token_logprobs=lps,
                         tokens=self._token_texts(ids, seq.healed), mean_logprob=mean,
                         finish_reason=seq.finish_reason or "length", top_logprobs=top)

    def _finish_if_done(self, req: _Request) -> list[StepOutput]:
        if any(s.finish_reason is None for s in req.seqs):
            return []
        self._running.pop(req.id, None)
        self._free(req)
        if req.streaming:
            return []
        ranked = sorted(req.seqs, key=lambda s: self._candidate(s, 0).mean_logprob, reverse=True)
        return [StepOutput(req.id, i, s.text, True, self._candidate(s, i))
                for i, s in enumerate(ranked[: req.params.n])]

    # -- beam search -----------------------------------------------------------------------------------------
    def _beam_step(self, req: _Request, lps: torch.Tensor, beams: list[_Seq]) -> list[StepOutput]:
        """Expand the alive beams (rows of `lps`), keep the best `width`, move their KV into the slots."""
        p = req.params
        width = p.beam_width
        first = all(not b.ids for b in beams)
        totals = torch.tensor([b.total() for b in beams], device=lps.device)
        cands = sampling.beam_candidates(lps, totals, width, req.allowed if first else None)
        tops = [self._top(req, row) for row in lps] if p.top_logprobs else None
        length = len(self._slot_tokens[beams[0].slot])
        alive: list[_Seq] = []
        parents: list[int] = []
        for parent, token, logprob in cands:
            src = beams[parent]
            hyp = self._new_seq(req, 0, src.slot)
            hyp.ids, hyp.logprobs = src.ids + [token], src.logprobs + [logprob]
            if tops is not None:
                hyp.top = src.top + [tops[parent]]  # type: ignore[list-item]
            for t in hyp.ids:
                if t in self.eos_ids:
                    hyp.ended_by_eos = True
                    break
                self._push_text(hyp, t)
            cut = find_stop(hyp.text, p.stop) if p.stop else -1
            if hyp.ended_by_eos or cut >= 0:
                if cut >= 0:
                    hyp.text = hyp.text[:cut]
                hyp.finish_reason = "stop"
                req.beams_finished.append(hyp)
                continue
            if len(hyp.ids) >= p.max_tokens or length + 1 >= self.max_seq_len:
                hyp.text += hyp.decoder.decode(b"", final=True)
                hyp.finish_reason = "length"
                req.beams_finished.append(hyp)
                continue
            alive.append(hyp)
            parents.append(src.slot)
            self.stats.generated_tokens += 1
            if len(alive) == width:
                break
        slots = req.slots[: len(alive)]
        self.model.reorder_slots(parents, slots, length)
        parent_tokens = [list(self._slot_tokens[s]) for s in parents]
        for hyp, slot, toks in zip(alive, slots, parent_tokens, strict=True):
            hyp.slot = slot
            hyp.pending = hyp.ids[-1]
            self._slot_tokens[slot] = toks
        req.seqs = alive
        if not sampling.beam_done(self._as_hyps(req.beams_finished), self._as_hyps(alive), width):
            return []
        self._running.pop(req.id, None)
        self._free(req)
        for hyp in alive:
            hyp.text += hyp.decoder.decode(b"", final=True)
            hyp.finish_reason = "length"
        everyone = req.beams_finished + alive
        ranked = sorted(everyone, key=lambda h: self._candidate(h, 0).mean_logprob, reverse=True)
        return [StepOutput(req.id, i, h.text, True, self._candidate(h, i)) for i, h in enumerate(ranked[: p.n])]

    @staticmethod
    def _as_hyps(seqs: list[_Seq]) -> list[sampling.Hypothesis]:
        return [sampling.Hypothesis(s.ids, s.logprobs) for s in seqs]
