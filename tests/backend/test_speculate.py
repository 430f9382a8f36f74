"""Speculative decoding's pure parts: prompt-lookup drafts, greedy and rejection-sampling verification."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from model_backend.speculate import (
    AcceptanceTracker,
    DraftDistribution,
    NgramDrafter,
    verify_greedy,
    verify_sampled,
)


def test_ngram_drafter_copies_what_followed_the_latest_occurrence() -> None:
    d = NgramDrafter(max_n=3, min_n=2, max_draft=4)
    d.extend([1, 2, 3, 4, 5, 6, 9, 1, 2, 3])
    assert d.propose() == [4, 5, 6, 9]  # the 3-gram (1, 2, 3) was followed by 4, 5, 6, 9
    d.extend([7, 1, 2, 3])
    assert d.propose() == [7, 1, 2, 3]  # the LATEST occurrence wins
    assert d.propose(limit=2) == [7, 1]


def test_ngram_drafter_falls_back_to_shorter_ngrams_and_to_nothing() -> None:
    d = NgramDrafter(max_n=3, min_n=2, max_draft=8)
    d.extend([5, 6, 7, 8, 0, 6, 7])
    assert d.propose() == [8, 0, 6, 7]  # (0, 6, 7) unseen; (6, 7) was followed by 8, 0, 6, 7
    d.extend([42])
    assert d.propose() == []  # (7, 42) never seen before
    assert NgramDrafter().propose() == []


def test_ngram_drafter_never_proposes_past_the_end() -> None:
    d = NgramDrafter(max_n=2, min_n=2, max_draft=8)
    d.extend([3, 3, 3, 3])
    assert d.propose() == [3]  # (3, 3) last continued at position 3: one token known


def test_verify_greedy_keeps_the_agreeing_prefix_and_the_models_next_token() -> None:
    assert verify_greedy([4, 5, 6], [4, 5, 6, 7]) == [4, 5, 6, 7]  # all kept + bonus token
    assert verify_greedy([4, 5, 6], [4, 9, 6, 7]) == [4, 9]  # first disagreement replaced by the argmax
    assert verify_greedy([4], [8, 1]) == [8]
    assert verify_greedy([], [3]) == [3]


def _dist(p: list[float]) -> tuple[torch.Tensor, torch.Tensor]:
    t = torch.tensor(p, dtype=torch.float64)
    return torch.arange(len(p)), t / t.sum()


def _first_token_histogram(draft: DraftDistribution, p: list[float], trials: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    target = [_dist(p)] * (len(draft.tokens) + 1)
    counts = torch.zeros(len(p), dtype=torch.float64)
    for _ in range(trials):
        counts[verify_sampled(draft, target, gen)[0]] += 1
    return counts / trials


def test_rejection_sampling_keeps_the_target_distribution_for_a_point_mass_draft() -> None:
    p = [0.5, 0.3, 0.15, 0.05]
    for x in range(4):  # whatever token the n-gram drafter proposes
        hist = _first_token_histogram(DraftDistribution([x, 1]), p, 3000, seed=x)
        assert torch.allclose(hist, torch.tensor(p, dtype=torch.float64), atol=0.03), (x, hist)


def test_rejection_sampling_keeps_the_target_distribution_for_a_draft_model() -> None:
    p = [0.1, 0.6, 0.2, 0.1]
    q = torch.tensor([[0.7, 0.1, 0.1, 0.1], [0.25, 0.25, 0.25, 0.25]], dtype=torch.float64)
    gen = torch.Generator().manual_seed(0)
    counts = torch.zeros(4, dtype=torch.float64)
    trials = 3000
    for _ in range(trials):
        x = int(torch.multinomial(q[0], 1, generator=gen).item())  # the draft samples from q
        out = verify_sampled(DraftDistribution([x], q[:1]), [_dist(p), _dist(p)], gen)
        counts[out[0]] += 1
    assert torch.allclose(counts / trials, torch.tensor(p, dtype=torch.float64), atol=0.03)


def test_rejection_sampling_with_a_restricted_candidate_set_emits_only_candidates() -> None:
    ids, probs = torch.tensor([7, 3]), torch.tensor([0.75, 0.25])
    gen = torch.Generator().manual_seed(1)
    seen = set()
    for _ in range(300):
        out = verify_sampled(DraftDistribution([5, 6]), [(ids, probs)] * 3, gen)
        assert out == [out[0]] and out[0] in (7, 3)  # 5 is not a candidate: always rejected
        seen.add(out[0])
    assert seen == {7, 3}


def test_acceptance_tracker_shrinks_after_failures_and_grows_after_hits() -> None:
    t = AcceptanceTracker(max_draft=8)
    for _ in range(10):
        t.update(8, 0)
    assert t.budget() == 1
    for _ in range(10):
        t.update(4, 4)
    assert t.budget() == 8


# --- in the engine: the output never changes ------------------------------------------------------------------
from model_backend.engine import Engine, SamplingParams  # noqa: E402

ASSERTS = (
    "def test_slugify():\n"
    '    assert slugify("Hello World") == "hello-world"\n'
    '    assert slugify("Hello  World") == "hello-world"\n'
    '    assert slugify("Hello_World") == "hello-world"\n'
)


def _run(engine: Engine, mode: str, prompt: str, **kw) -> tuple[list, dict]:
    engine.set_speculation(mode)
    before = dataclasses.asdict(engine.stats)
    try:
        cands = engine.generate(prompt, SamplingParams(**kw))
    finally:
        engine.set_speculation("off")
    after = dataclasses.asdict(engine.stats)
    return cands, {k: after[k] - before[k] for k in ("spec_steps", "spec_proposed", "spec_accepted")}


def test_ngram_speculation_gives_the_same_greedy_text_and_skips_steps(default_engine: Engine) -> None:
    [off], _ = _run(default_engine, "off", ASSERTS, max_tokens=48, temperature=0.0)
    [on], spec = _run(default_engine, "ngram", ASSERTS, max_tokens=48, temperature=0.0)
    assert on.text == off.text and on.token_ids == off.token_ids
    assert on.finish_reason == off.finish_reason
    assert [round(x, 3) for x in on.token_logprobs] == pytest.approx(
        [round(x, 3) for x in off.token_logprobs], abs=2e-2
    )
    assert spec["spec_steps"] > 0 and spec["spec_accepted"] > 0  # the asserts' pattern was copied


def test_ngram_speculation_keeps_stop_strings_and_max_tokens(default_engine: Engine) -> None:
    for kw in ({"max_tokens": 5}, {"max_tokens": 40, "stop": ["World"]}):
        [off], _ = _run(default_engine, "off", ASSERTS, temperature=0.0, **kw)
        [on], _ = _run(default_engine, "ngram", ASSERTS, temperature=0.0, **kw)
        assert (on.text, on.token_ids, on.finish_reason) == (off.text, off.token_ids, off.finish_reason)
        assert len(on.token_ids) <= kw["max_tokens"]


def test_sampling_with_speculation_returns_the_models_tokens(default_engine: Engine) -> None:
    [cand], spec = _run(
        default_engine,
        "ngram",
        ASSERTS,
        max_tokens=32,
        temperature=0.7,
        top_p=0.95,
        seed=4,
        token_healing=False,
    )
    assert cand.text == default_engine.tokenizer.decode(cand.token_ids)
    assert 0 < len(cand.token_ids) <= 32 and all(lp <= 0 for lp in cand.token_logprobs)


def test_draft_model_speculation_gives_the_same_greedy_text(tiny_engine) -> None:
    target = tiny_engine("llama")
    draft = tiny_engine("llama", max_batch=1, cache_slots=1)
    prompt = "hello world hello world hello"
    [off] = target.generate(prompt, SamplingParams(max_tokens=12, temperature=0.0))
    target.set_speculation("draft", draft)
    [on] = target.generate(prompt, SamplingParams(max_tokens=12, temperature=0.0))
    assert on.token_ids == off.token_ids
    assert target.stats.spec_accepted == target.stats.spec_proposed > 0  # the same model agrees with itself


def test_speculation_modes_are_checked(tiny_engine) -> None:
    eng = tiny_engine("llama")
    with pytest.raises(ValueError, match="one of off, ngram, draft, auto"):
        eng.set_speculation("fast")
    with pytest.raises(ValueError, match="needs a draft model"):
        eng.set_speculation("draft")
