"""The step-based engine: requests -> slots -> batched decode steps -> streamed text.

One thread calls it (the server's worker, or `generate`). `step()` is the orchestrator; the pieces it runs live
in their own modules:
  - admission (FIFO, while the decode batch has room): slots.SlotCache places the request in a KV-cache slot,
    reusing the longest cached prefix of any idle slot (the prefix cache);
  - prefill, over one or more steps (`prefill_interleave` tokens per step while others decode), then the prompt's
    KV is copied into the slots of its sibling samples / beams and their first tokens are sampled;
  - ONE batched forward over every other running sequence (rows at different positions), then the next token of
    each: sampling.py (with healing.TokenHealer's constraint), or beam.py for beam search;
  - each token's text: stops.TextStream (incremental UTF-8, healed bytes, stop strings), and at the end the
    candidates, ranked by ranking.best_n where the request asked for more than it returns.
Token healing (healing.py) runs once, in `add_request`. Loading (`load`, `from_checkpoint`, background
packing) builds the model and hands it to `__init__`.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import random
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import torch

from model_backend import beam, sampling, speculate
from model_backend.guide import IdentifierGuide
from model_backend.healing import TokenHealer
from model_backend.loader import resolve_device
from model_backend.model import Transformer, pack_linear, pack_targets
from model_backend.ranking import best_n
from model_backend.sequences import Candidate, EngineStats, Request, SamplingParams, Seq, StepOutput
from model_backend.slots import SlotCache, default_cache_slots
from model_backend.stops import token_texts

__all__ = ["Candidate", "Engine", "EngineStats", "SamplingParams", "StepOutput", "resolve_device"]

log = logging.getLogger(__name__)

PREFILL_CHUNK = 512  # prompt tokens per forward during prefill (bounds the attention scratch memory)
# prompt tokens prefilled per engine step while other sequences decode, so a long new prompt does not stall their
# streams for its whole prefill (docs/backend.md, "Serving model")
INTERLEAVE_CHUNK = 128
DEFAULT_MAX_SEQ = 4096


class Engine:
    def __init__(  # long: its docstring documents each option; the body sets up the fields in one place
        self,
        model: Transformer,
        tokenizer: Any,
        config: Any,
        *,
        device: torch.device,
        max_batch: int = 8,
        max_seq_len: int | None = None,
        prefill_threads: int | None = None,
        decode_threads: int | None = 1,
        cache_slots: int | None = None,
        kv_dtype: torch.dtype | None = None,
        prefill_interleave: int = INTERLEAVE_CHUNK,
    ) -> None:
        """prefill_threads / decode_threads (CPU): torch intra-op threads for each phase; None = torch's setting
        when the engine is made. Decode defaults to ONE thread: its ops are small, and with 2 threads on 2 cores
        any other busy process makes OpenMP's threads wait for each other (docs/performance.md).

        cache_slots: KV-cache slots (>= max_batch). Only max_batch sequences decode at once; the other slots
        keep idle sequences' KV as a prefix cache (LRU). Each slot costs `kv_bytes_per_slot` bytes once
        filled to max_seq_len (the cache is allocated uninitialised and zeroed lazily per slot, so on the CPU
        unused slots and positions take no memory). None: slots.CACHE_SLOTS_PER_BATCH x max_batch, lowered (not
        below max_batch) so the whole cache fits slots.CACHE_MEMORY_FRACTION of the device's memory.

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
            cache_slots = default_cache_slots(max_batch, self.kv_bytes_per_slot(), device)
        elif cache_slots < max_batch:
            raise ValueError(f"cache_slots ({cache_slots}) must be >= max_batch ({max_batch})")
        self.cache_slots = cache_slots
        self.stats = EngineStats()
        self.weight_format = "float32"
        self._packing: list[tuple[Any, str, Any]] = []
        self._blocks: dict[str, Any] | None = None  # the "blocks" format's GGUF blocks, until packed
        self.slots = SlotCache(model, cache_slots, self.max_seq_len, self.kv_dtype)
        self.eos_ids = frozenset(getattr(tokenizer, "eos_ids", ()) or ())
        self.healer = TokenHealer(tokenizer, config.vocab_size, device)
        self.guide = IdentifierGuide(self.healer, self.eos_ids)
        self.speculator = speculate.Speculator()
        self._waiting: deque[Request] = deque()
        self._running: dict[str, Request] = {}
        self._request_ids = 0  # names `generate`'s requests
        # Asked between prefill chunks: True ends the step early (the caller has a cancellation to apply), the
        # prompt's remaining chunks follow in later steps. The server's worker sets it.
        self.interrupt: Callable[[], bool] | None = None

    def set_speculation(self, mode: str, draft: Engine | str | None = None, **load_kw: Any) -> None:
        """Speculative decoding of lone sequences (speculate.py): "off", "ngram" (prompt lookup), "draft" (a small
        model with the same vocabulary drafts: an Engine, or a model spec loaded here on this engine's device with
        `load_kw`), "auto" (n-grams where the text repeats, else the draft model if there is one). The output is
        the same as without it."""
        if isinstance(draft, str):
            draft = Engine.load(
                draft,
                device=str(self.device),
                max_batch=1,
                cache_slots=1,
                max_seq_len=self.max_seq_len,
                decode_threads=self.decode_threads,
                prefill_threads=self.prefill_threads,
                **load_kw,
            )
        self.speculator.configure(mode, draft, self.tokenizer)

    def kv_bytes_per_slot(self) -> int:
        """Bytes of K and V one cache slot holds when filled to max_seq_len."""
        cfg = self.config
        dtype = self.kv_dtype
        elem = torch.empty((), dtype=dtype).element_size()
        return 2 * cfg.n_layers * cfg.n_kv_heads * self.max_seq_len * cfg.head_dim * elem

    # -- construction ------------------------------------------------------------------------------------------
    @classmethod
    def load(cls, model: str = "default", **options: Any) -> Engine:
        """Load a checkpoint (see weights.resolve_model) onto `device` (model_backend/loader.py: load_engine and
        engine_from_checkpoint, whose signatures list every option: device, max_batch, max_seq_len, quantize,
        rope_theta, rope_scaling, dtype, cache_dir, progress, pack_in_background, and the engine's own below).

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

        return load_engine(cls, model, **options)

    @classmethod
    def from_checkpoint(cls, ckpt: Any, **options: Any) -> Engine:
        """An engine on an already loaded checkpoint (loader.engine_from_checkpoint; options as for `load`)."""
        from model_backend.loader import engine_from_checkpoint

        return engine_from_checkpoint(cls, ckpt, **options)

    # -- background weight packing (cold start) ------------------------------------------------------------------
    def _start_packing(self, fmt: str) -> None:
        """Pack the Linear layers on worker threads; step() swaps each packed layer in when it is ready.
        Until then a layer runs as plain fp32 (same results up to fp16 rounding), so the engine serves at once."""
        from concurrent.futures import ThreadPoolExecutor

        pool = ThreadPoolExecutor(max(1, min(8, os.cpu_count() or 1)), thread_name_prefix="pack")
        blocks = self._blocks or {}
        self._packing = [
            (parent, name, pool.submit(pack_linear, child, fmt, blocks.get(qual)))
            for parent, name, child, qual in pack_targets(self.model, fmt)
        ]
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
        if self.is_unfinished(request_id):
            raise ValueError(f"request id {request_id!r} is already in use")
        if params.n_sequences > self.max_batch:
            raise ValueError(
                f"request needs {params.n_sequences} sequences but the engine has "
                f"{self.max_batch} slots (max_batch)"
            )
        ids = self._prompt_ids(prompt)
        heal, allowed = b"", None
        if params.token_healing:
            ids, heal, allowed = self.healer.heal(ids)
        seed = params.seed if params.seed is not None else random.getrandbits(63)
        gen = torch.Generator(device=self.device)
        gen.manual_seed(seed)
        guide = None
        if params.allowed_identifiers is not None:
            guide = tuple(c.encode("utf-8") for c in params.allowed_identifiers)
        self._waiting.append(Request(request_id, params, ids, heal, allowed, gen, guide=guide))

    def has_unfinished(self) -> bool:
        return bool(self._waiting or self._running)

    def is_unfinished(self, request_id: str) -> bool:
        return request_id in self._running or any(r.id == request_id for r in self._waiting)

    def abort(self, request_id: str) -> None:
        self._waiting = deque(r for r in self._waiting if r.id != request_id)
        req = self._running.get(request_id)
        if req is not None:
            self._retire(req)

    def step(self) -> list[StepOutput]:
        """Admit waiting requests, prefill (a budget of it while others decode), then one decode step for every
        running sequence. Returns what each sequence streamed and the candidates of what finished."""
        self._install_packed()
        for req in self._running.values():
            req.fresh = False
        self._admit()
        out = self._prefill_step()
        out.extend(self._decode_step())
        return out

    def generate(self, prompt: str | list[int], params: SamplingParams | None = None) -> list[Candidate]:
        params = params or SamplingParams()
        self._request_ids += 1
        rid = f"generate-{self._request_ids}"
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
            raise ValueError(
                f"prompt is {len(ids)} tokens but the context holds {self.max_seq_len} "
                f"(model context {self.config.context_length}); shorten the prompt"
            )
        return ids

    # -- admission and prefill ---------------------------------------------------------------------------------
    def _admit(self) -> None:
        """FIFO: a request starts when its sequences fit the decode batch (max_batch); there is always an idle
        cache slot for each, since cache_slots >= max_batch. Its main slot gets the longest cached prefix."""
        while self._waiting and self.slots.busy() + self._waiting[0].params.n_sequences <= self.max_batch:
            req = self._waiting.popleft()
            self._running[req.id] = req
            placed = self.slots.place(req.id, req.prompt, req.params.n_sequences)
            req.slots, req.prefilled = placed.slots, placed.reused
            if placed.reused > 0:
                self.stats.prefix_cache_hits += 1
                self.stats.prefix_tokens_reused += placed.reused
            self.stats.prompt_tokens += len(req.prompt)
            self.stats.prefill_tokens += len(req.prompt) - placed.reused

    def _prefill_step(self) -> list[StepOutput]:
        """Prefill, shortest remaining prompt first. While sequences decode, at most `prefill_interleave` tokens
        per step, so they get a token between chunks and a warm keystroke (a few new tokens) overtakes a cold
        prompt; when nothing decodes, everything at once (docs/backend.md, "Serving model")."""
        budget = None
        if self.prefill_interleave and any(q.live for r in self._running.values() for q in r.seqs):
            budget = self.prefill_interleave
        out: list[StepOutput] = []
        for req in sorted(
            (r for r in self._running.values() if r.prefilling), key=lambda r: len(r.prompt) - r.prefilled
        ):
            if (budget is not None and budget <= 0) or self._interrupted():
                break
            logits, used = self._prefill(req, budget)
            if budget is not None:
                budget -= used
            if logits is not None:
                out.extend(self._first_tokens(req, logits))
        return out

    def _prefill(self, req: Request, budget: int | None) -> tuple[torch.Tensor | None, int]:
        """Prefill up to `budget` more prompt tokens (None: all) into the request's main slot. Returns the last
        position's logits once the whole prompt is in (else None) and the tokens computed."""
        t0 = time.perf_counter()
        ids, main = req.prompt, req.slots[0]
        begin = req.prefilled
        end = len(ids) if budget is None else min(len(ids), begin + budget)
        logits = None
        for a in range(begin, end, PREFILL_CHUNK):
            if a > begin and self._interrupted():
                break  # a cancellation waits: the chunks so far stay in the slot (a usable cached prefix)
            chunk = ids[a : min(a + PREFILL_CHUNK, end)]
            logits = self._forward([chunk], [a], [main])
            self.slots.extend(main, chunk)
            req.prefilled = a + len(chunk)
        self._sync()
        self.stats.prefill_seconds += time.perf_counter() - t0
        return (logits if not req.prefilling else None), req.prefilled - begin

    def _interrupted(self) -> bool:
        return self.interrupt is not None and self.interrupt()

    def _first_tokens(self, req: Request, logits: torch.Tensor) -> list[StepOutput]:
        """The whole prompt is in: share it with sibling samples and choose every sequence's first token."""
        main = req.slots[0]
        for s in req.slots[1:] if req.params.beam_width == 1 else ():  # n samples share the one prefill
            self.slots.copy(main, s)
            self.stats.shared_prefills += 1
        req.fresh = True
        req.seqs = [req.new_seq(i, s) for i, s in enumerate(req.slots)]
        lp = sampling.log_probs(logits[0])
        if req.params.beam_width > 1:
            return self._beam_step(req, lp.unsqueeze(0), [req.seqs[0]])
        return self._sample_next(req, [(seq, logits[0], lp) for seq in req.seqs])

    # -- decode --------------------------------------------------------------------------------------------------
    def _decode_step(self) -> list[StepOutput]:
        """ONE batched forward over every running sequence's pending token (rows at different positions), then
        each sequence's next token.

        A lone sequence may verify draft tokens in the same forward instead (`_speculative_step`)."""
        rows = [(req, seq) for req in self._running.values() if not req.fresh for seq in req.seqs if seq.live]
        if not rows:
            return []
        rows.sort(key=lambda r: r[1].slot)
        t0 = time.perf_counter()
        spec = self._speculative_step(*rows[0]) if len(rows) == 1 and self.speculator.active else None
        if spec is not None:
            self._sync()
            self.stats.decode_seconds += time.perf_counter() - t0
            self.stats.decode_steps += 1
            return spec
        slots = [seq.slot for _, seq in rows]
        logits = self._forward(
            [[seq.pending] for _, seq in rows], [len(self.slots.tokens[s]) for s in slots], slots
        )
        for _, seq in rows:
            self.slots.extend(seq.slot, [seq.pending])  # type: ignore[list-item]
            seq.pending = None
        lps = sampling.log_probs(logits)
        by_req: dict[str, list[int]] = {}
        for i, (req, _) in enumerate(rows):
            by_req.setdefault(req.id, []).append(i)
        out: list[StepOutput] = []
        for rid, idx in by_req.items():
            req = self._running[rid]
            if req.params.beam_width > 1:
                out.extend(self._beam_step(req, lps[idx], [rows[i][1] for i in idx]))
            else:
                out.extend(self._sample_next(req, [(rows[i][1], logits[i], lps[i]) for i in idx]))
        self._sync()
        self.stats.decode_seconds += time.perf_counter() - t0
        self.stats.decode_steps += 1
        return out

    def _speculative_step(self, req: Request, seq: Seq) -> list[StepOutput] | None:
        """The pending token and draft tokens in ONE forward (all positions' logits); the tokens the verification
        keeps go into the slot, as if each had had its own step. None when there is nothing to verify (beam search,
        token healing or guided decoding still constraining the next token, no draft)."""
        p = req.params
        pos = len(self.slots.tokens[seq.slot])
        budget = min(p.max_tokens - len(seq.ids) - 1, self.max_seq_len - pos - 2)
        if p.beam_width > 1 or seq.out.strip or seq.guided or budget < 1:
            return None
        key = (req.id, seq.index)
        draft = self.speculator.draft(key, req.prompt + seq.ids, budget, p, req.generator)
        if not draft.tokens:
            return None
        logits = self._forward([[seq.pending, *draft.tokens]], [pos], [seq.slot], all_logits=True)[0]
        lps = sampling.log_probs(logits)
        emitted = self.speculator.verify(key, draft, logits, p, req.generator)
        self.stats.spec_steps += 1
        self.stats.spec_proposed += len(draft.tokens)
        self.stats.spec_accepted += len(emitted) - 1
        out: list[StepOutput] = []
        for j, token in enumerate(emitted):  # all but the last are accepted draft tokens, already in the KV
            self.slots.extend(seq.slot, [seq.pending])  # type: ignore[list-item]
            seq.pending = None
            out.extend(
                self._accept(
                    req, seq, token, float(lps[j, token].item()), sampling.top_tokens(lps[j], p.top_logprobs)
                )
            )
            if seq.finish_reason is not None:
                break
        return out + self._finish_if_done(req)

    def forward_tokens(self, ids: list[int], start: int, slot: int) -> torch.Tensor:
        """Logits [vocab] after writing `ids` at positions start.. of cache slot `slot` (a draft model's step)."""
        logits = None
        for a in range(0, len(ids), PREFILL_CHUNK):
            logits = self._forward([ids[a : a + PREFILL_CHUNK]], [start + a], [slot])
        assert logits is not None
        return logits[0]

    def _forward(
        self, tokens: list[list[int]], start: list[int], slots: list[int], *, all_logits: bool = False
    ) -> torch.Tensor:
        """Logits of each row's last token ([rows, vocab]), or of every token (all_logits: [rows, t, vocab]); a
        verification forward (all_logits) runs on the decode threads."""
        n = self.prefill_threads if len(tokens[0]) > 1 and not all_logits else self.decode_threads
        if self.device.type == "cpu" and torch.get_num_threads() != n:
            torch.set_num_threads(n)
        x = torch.tensor(tokens, dtype=torch.long, device=self.device)
        return self.model(x, start, slots, all_logits=all_logits)

    def _sync(self) -> None:
        """Wait for the GPU, so the step's timings (stats) are its own."""
        if self.device.type == "cuda":
            torch.cuda.synchronize()

    # -- choosing tokens, text, finishing ----------------------------------------------------------------------
    def _sample_next(
        self, req: Request, rows: list[tuple[Seq, torch.Tensor, torch.Tensor]]
    ) -> list[StepOutput]:
        """The next token of each of a request's sampling sequences from its (logits, log-probs) row. Samples
        draw from the request's one generator in sample order, not in slot order (the slots a request gets
        depend on the cache), so the same seed gives the same samples."""
        p = req.params
        out: list[StepOutput] = []
        for seq, logits, lp in sorted(rows, key=lambda r: r[0].index):
            allowed = self._allowed(req, seq)
            token, logprob = sampling.sample_token(
                logits,
                temperature=p.temperature,
                top_k=p.top_k,
                top_p=p.top_p,
                generator=req.generator,
                allowed=allowed,
                lp=lp,
            )
            out.extend(self._accept(req, seq, token, logprob, sampling.top_tokens(lp, p.top_logprobs)))
        return out + self._finish_if_done(req)

    def _allowed(self, req: Request, seq: Seq) -> torch.Tensor | None:
        """The tokens `seq` may take next: guided decoding's (guide.py, token healing included), else token
        healing's, else None (any)."""
        if seq.guided and req.guide is not None:
            pending = seq.out.strip
            generated = b""
            if not pending:
                text = b"".join(self.tokenizer.token_bytes(t) for t in seq.ids if t not in self.eos_ids)
                generated = text[len(req.heal) :]
            ids = self.guide.allowed(req.guide, generated, pending)
            if ids is not None:
                return ids
            seq.guided = False  # past the identifier (or off its path): free from now on
        return self.healer.options(seq.out.strip) if seq.out.strip else None

    def _accept(
        self, req: Request, seq: Seq, token: int, logprob: float, top: list[tuple[int, float]] | None
    ) -> list[StepOutput]:
        """Record a sampled token of a sampling sequence; return its stream output."""
        p = req.params
        seq.ids.append(token)
        seq.logprobs.append(logprob)
        if top is not None:
            seq.top.append(top)
        self.stats.generated_tokens += 1
        if token in self.eos_ids:
            seq.ended_by_eos = True
            seq.out.flush()
            seq.end("stop")
        else:
            seq.out.push(self.tokenizer.token_bytes(token))
            if seq.out.cut_at_stop(p.stop):
                seq.end("stop")
            elif len(seq.ids) >= p.max_tokens or len(req.prompt) + len(seq.ids) >= self.max_seq_len:
                seq.end("length")
            else:
                seq.pending = token
        finished = seq.finish_reason is not None
        delta = seq.out.take_delta(p.stop, finished)
        if not req.streaming:
            return []
        return [
            StepOutput(
                req.id, seq.index, delta, finished, self._candidate(seq, seq.index) if finished else None
            )
        ]

    def _beam_step(self, req: Request, lps: torch.Tensor, beams: list[Seq]) -> list[StepOutput]:
        """Expand the alive beams (rows of `lps`), keep the best `beam_width`, move their KV into the slots."""
        p = req.params
        if req.guide is not None:  # each beam's own guided-decoding mask (the healing one is in `allowed`)
            lps = lps.clone()
            for row, b in enumerate(beams):
                ids = self._allowed(req, b)
                if ids is not None:
                    keep = lps[row, ids]
                    lps[row] = float("-inf")
                    lps[row, ids] = keep
        at_limit = len(self.slots.tokens[beams[0].slot]) + 1 >= self.max_seq_len
        tops = [sampling.top_tokens(row, p.top_logprobs) for row in lps] if p.top_logprobs else None
        alive, parents = beam.expand(
            req,
            lps,
            beams,
            tops=tops,
            eos_ids=self.eos_ids,
            token_bytes=self.tokenizer.token_bytes,
            at_limit=at_limit,
        )
        self.stats.generated_tokens += len(alive)
        slots = req.slots[: len(alive)]
        self.slots.reorder(parents, slots)
        for hyp, slot in zip(alive, slots, strict=True):
            hyp.slot, hyp.pending = slot, hyp.ids[-1]
        req.seqs = alive
        if not beam.done(req):
            return []
        self._retire(req)
        for hyp in alive:
            hyp.end("length")
        return self._ranked(req, req.beams_finished + alive)

    def _finish_if_done(self, req: Request) -> list[StepOutput]:
        if any(s.finish_reason is None for s in req.seqs):
            return []
        self._retire(req)
        return [] if req.streaming else self._ranked(req, req.seqs)

    def _ranked(self, req: Request, seqs: list[Seq]) -> list[StepOutput]:
        """The request's n best candidates (ranking.best_n), indexed by rank, for requests that do not stream."""
        chosen = best_n([self._candidate(s, i) for i, s in enumerate(seqs)], req.params.n)
        return [
            StepOutput(req.id, i, c.text, True, dataclasses.replace(c, index=i)) for i, c in enumerate(chosen)
        ]

    def _retire(self, req: Request) -> None:
        """The request leaves the engine; its slots go idle with their KV cached."""
        self._running.pop(req.id, None)
        self.slots.release(req.id, req.slots)
        self.speculator.forget(req.id)
        req.slots = []

    def _candidate(self, seq: Seq, index: int) -> Candidate:
        ids, lps = list(seq.ids), list(seq.logprobs)
        mean = sum(lps) / len(lps) if lps else 0.0
        if seq.ended_by_eos:
            ids, lps = ids[:-1], lps[:-1]
        top = None
        if seq.top:
            top = [[(self.tokenizer.token_text(t), v) for t, v in step] for step in seq.top[: len(ids)]]
        return Candidate(
            index=index,
            text=seq.out.text,
            token_ids=ids,
            token_logprobs=lps,
            tokens=token_texts(ids, seq.out.healed, self.tokenizer.token_bytes),
            mean_logprob=mean,
            finish_reason=seq.finish_reason or "length",
            top_logprobs=top,
        )
