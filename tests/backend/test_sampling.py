"""sampling.py: property tests of top-k / top-p sets, seeded reproducibility, beam helpers."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from model_backend import sampling

FAST = settings(max_examples=25, deadline=None)


def reference_set(logits: torch.Tensor, temperature: float, top_k: int, top_p: float) -> set[int]:
    """The nucleus by a full sort: the smallest top prefix whose mass reaches top_p, within the top k."""
    probs = torch.softmax(logits / temperature, dim=-1)
    p, ids = torch.sort(probs, descending=True)
    if top_k > 0:
        p, ids = p[:top_k], ids[:top_k]
    if top_p >= 1.0:
        return set(ids.tolist())
    cum = torch.cumsum(p, 0)
    keep = int((cum < top_p).sum()) + 1
    return set(ids[:keep].tolist())


logits_st = st.builds(
    lambda seed, vocab, scale: torch.randn(vocab, generator=torch.Generator().manual_seed(seed)) * scale,
    st.integers(0, 10_000),
    st.sampled_from([5, 300, 5000]),
    st.sampled_from([0.5, 3.0, 10.0]),
)


@FAST
@given(
    logits=logits_st,
    temperature=st.sampled_from([0.3, 1.0, 1.7]),
    top_k=st.sampled_from([0, 1, 3, 40]),
    top_p=st.sampled_from([0.05, 0.5, 0.9, 0.99, 1.0]),
)
def test_candidate_set_is_the_top_k_top_p_set(logits, temperature, top_k, top_p):
    ids, probs = sampling.candidate_set(logits, temperature, top_k, top_p)
    got = set(ids.tolist())
    want = reference_set(logits, temperature, top_k, top_p)
    # ties at the boundary aside, the sets agree
    assert got == want or abs(len(got) - len(want)) <= 1 and len(got ^ want) <= 2
    assert (probs >= 0).all()


@FAST
@given(
    logits=logits_st,
    top_k=st.sampled_from([0, 2, 10]),
    top_p=st.sampled_from([0.3, 0.8, 1.0]),
    seed=st.integers(0, 2**31),
)
def test_samples_never_leave_the_set_and_seed_reproduces(logits, top_k, top_p, seed):
    allowed = reference_set(logits, 1.0, top_k, top_p)
    ids, _ = sampling.candidate_set(logits, 1.0, top_k, top_p)
    allowed |= set(ids.tolist())  # boundary ties
    runs = []
    for _ in range(2):
        g = torch.Generator().manual_seed(seed)
        runs.append(
            [
                sampling.sample_token(logits, temperature=1.0, top_k=top_k, top_p=top_p, generator=g)[0]
                for _ in range(20)
            ]
        )
    assert runs[0] == runs[1]
    assert set(runs[0]) <= allowed


def test_greedy_and_logprob():
    logits = torch.tensor([0.1, 3.0, -1.0, 2.9])
    token, lp = sampling.sample_token(logits, temperature=0.0, top_k=0, top_p=1.0, generator=None)
    assert token == 1
    assert abs(lp - torch.log_softmax(logits, 0)[1].item()) < 1e-6


def test_allowed_constrains_even_greedy():
    logits = torch.tensor([5.0, 1.0, 0.0, 2.0])
    token, lp = sampling.sample_token(
        logits, temperature=0.0, top_k=0, top_p=1.0, generator=None, allowed=torch.tensor([2, 3])
    )
    assert token == 3
    assert lp == torch.log_softmax(logits, 0)[3].item()  # the model's own log-prob, not the constrained one


def test_top_p_grows_the_candidate_set_when_the_mass_is_spread():
    logits = torch.zeros(1000)  # uniform: 0.9 of the mass needs 900 tokens, beyond the first 64
    ids, _ = sampling.candidate_set(logits, 1.0, 0, 0.9)
    assert 890 <= len(ids) <= 910


def test_beam_candidates_rank_by_cumulative_score():
    lps = torch.log_softmax(torch.tensor([[0.0, 2.0, 1.0], [3.0, 0.0, 0.0]]), dim=-1)
    totals = torch.tensor([0.0, -5.0])
    cands = sampling.beam_candidates(lps, totals, width=2)
    scores = [totals[p].item() + lp for p, _, lp in cands]
    assert scores == sorted(scores, reverse=True)
    assert cands[0][:2] == (0, 1)
    assert len(cands) == 4


def test_hypothesis_score_is_length_normalised():
    h = sampling.Hypothesis([1, 2, 3], [-1.0, -2.0, -3.0])
    assert h.score == -2.0
    assert sampling.beam_done([h], [sampling.Hypothesis([4], [-5.0])], width=1)
    assert not sampling.beam_done([h], [sampling.Hypothesis([4], [-0.5])], width=1)
