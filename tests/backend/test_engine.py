"""engine.py on tiny random models (through the real loader and tokenizer) and on the default GGUF."""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from model_backend.engine import Engine, SamplingParams
from model_backend.stops import find_stop, stop_holdback

PROMPT = "def fibonacci(n):\n    return"


def greedy(**kw) -> SamplingParams:
    kw.setdefault("max_tokens", 12)
    return SamplingParams(temperature=0.0, token_healing=kw.pop("token_healing", False), **kw)


def model_logprobs(engine: Engine, prompt_ids: list[int], generated: list[int]) -> list[float]:
    """Log-probs of `generated` after `prompt_ids` by one full forward (a spare slot, no cache reuse)."""
    seq = torch.tensor([prompt_ids + generated])
    slot = engine.max_batch - 1
    logits = engine.model(seq, [0], [slot], all_logits=True)[0]
    lp = torch.log_softmax(logits, dim=-1)
    n = len(prompt_ids)
    return [lp[n - 1 + i, t].item() for i, t in enumerate(generated)]


@pytest.mark.parametrize("arch", ["llama", "qwen2", "starcoder2"])
def test_greedy_matches_transformers_generate(arch, tiny_engine, tiny_hf):
    engine = tiny_engine(arch)
    ref, _, _ = tiny_hf(arch)
    ids = engine.tokenizer.encode(PROMPT)
    [cand] = engine.generate(ids, greedy(max_tokens=10))
    with torch.no_grad():
        out = ref.generate(torch.tensor([ids]), max_new_tokens=10, do_sample=False)
    want = out[0, len(ids) :].tolist()
    eos = engine.tokenizer.eos_ids
    got = cand.token_ids + ([next(iter(eos))] if cand.finish_reason == "stop" else [])
    assert got == want[: len(got)]
    assert cand.text == engine.tokenizer.decode(cand.token_ids)


def test_logprobs_are_the_model_s(tiny_engine):
    engine = tiny_engine("qwen2")
    ids = engine.tokenizer.encode(PROMPT)
    [cand] = engine.generate(ids, SamplingParams(max_tokens=8, temperature=1.0, seed=3, token_healing=False))
    want = model_logprobs(engine, ids, cand.token_ids)
    assert cand.token_logprobs == pytest.approx(want, abs=1e-4)
    if cand.finish_reason == "length":
        assert cand.mean_logprob == pytest.approx(sum(want) / len(want), abs=1e-4)


def test_eos_ends_with_stop_and_counts_in_the_mean(tiny_engine):
    engine = tiny_engine()
    [free] = engine.generate(PROMPT, greedy(max_tokens=6))
    first = free.token_ids[0]
    engine.eos_ids = frozenset({first})  # make the model's own greedy choice the end of sequence
    [c] = engine.generate(PROMPT, greedy(max_tokens=6))
    assert c.finish_reason == "stop"
    assert c.text == "" and c.token_ids == [] and c.token_logprobs == []
    assert c.mean_logprob == pytest.approx(free.token_logprobs[0])


def test_max_tokens_and_finish_reason(tiny_engine):
    engine = tiny_engine()
    [cand] = engine.generate(PROMPT, greedy(max_tokens=5))
    assert cand.finish_reason in ("length", "stop")
    if cand.finish_reason == "length":
        assert len(cand.token_ids) == 5


def test_same_seed_same_samples_and_n_share_one_prefill(tiny_engine):
    engine = tiny_engine(max_batch=4)
    params = SamplingParams(max_tokens=8, temperature=1.0, n=3, seed=7, token_healing=False)
    before = engine.stats.prefill_tokens
    a = engine.generate("x = [1, 2, 3]\nfor i in", params)
    prompt_len = len(engine.tokenizer.encode("x = [1, 2, 3]\nfor i in"))
    assert engine.stats.prefill_tokens - before == prompt_len  # one prefill for 3 samples
    assert engine.stats.shared_prefills >= 2
    engine2 = tiny_engine(max_batch=4)
    b = engine2.generate("x = [1, 2, 3]\nfor i in", params)
    assert [c.token_ids for c in a] == [c.token_ids for c in b]
    assert len({tuple(c.token_ids) for c in a}) > 1  # siblings sample independently
    # each sibling's log-probs are those of the full model: the copied KV is right
    ids = engine.tokenizer.encode("x = [1, 2, 3]\nfor i in")
    for c in a:
        assert c.token_logprobs == pytest.approx(model_logprobs(engine, ids, c.token_ids), abs=1e-4)


def test_same_seed_same_samples_whichever_slots_the_samples_get(tiny_engine):
    """The n samples draw from one generator in sample order, not in the order of the cache slots they got (a
    warm engine gives the main sample a higher slot than its sibling): same seed, same samples."""
    params = SamplingParams(max_tokens=8, temperature=1.0, n=2, seed=7, token_healing=False)
    engine = tiny_engine(max_batch=2, cache_slots=3)
    enc = engine.tokenizer.encode
    a, b, p = enc("SELECT name FROM users"), enc("The quick brown fox"), enc("x = [1, 2, 3]\nfor i in")
    for prompt in (a, b, p, a):  # p is cached in slot 2; slot 1 is now the least recently used
        engine.generate(prompt, greedy(max_tokens=4))
    warm = engine.generate(p, params)
    assert engine.slots.tokens[0][: len(a)] == a  # so the main sample ran in slot 2, its sibling in 1
    assert engine.slots.tokens[1][: len(p)] == engine.slots.tokens[2][: len(p)] == p
    cold = tiny_engine(max_batch=2, cache_slots=3).generate(p, params)
    assert [c.token_ids for c in warm] == [c.token_ids for c in cold]


def test_best_of_returns_the_top_n_by_mean_logprob(tiny_engine):
    engine = tiny_engine(max_batch=4)
    cands = engine.generate(PROMPT, SamplingParams(max_tokens=6, temperature=1.0, n=2, best_of=4, seed=1))
    assert len(cands) == 2
    assert [c.index for c in cands] == [0, 1]
    assert cands[0].mean_logprob >= cands[1].mean_logprob


def test_prefix_reuse_prefills_only_new_tokens_and_gives_identical_output(tiny_engine):
    engine = tiny_engine(max_batch=2)
    base = "int main(void) { return 0; }\nint main(void) { return 0; }\nint maers"
    engine.generate(base, greedy(max_tokens=4))
    longer = base + " WHERE id"
    n_base = len(engine.tokenizer.encode(base))
    n_longer = len(engine.tokenizer.encode(longer))
    before = engine.stats.prefill_tokens
    hits = engine.stats.prefix_cache_hits
    [warm] = engine.generate(longer, greedy(max_tokens=8))
    assert engine.stats.prefix_cache_hits == hits + 1
    computed = engine.stats.prefill_tokens - before
    assert computed <= n_longer - n_base + 2  # only the new tokens (+ a re-tokenised boundary)
    [cold] = tiny_engine(max_batch=2).generate(longer, greedy(max_tokens=8))
    assert warm.token_ids == cold.token_ids
    assert warm.token_logprobs == pytest.approx(cold.token_logprobs, abs=1e-4)


def test_prefix_cache_holds_more_prompts_than_max_batch(tiny_engine):
    engine = tiny_engine(max_batch=2, cache_slots=8)
    assert engine.cache_slots == 8 and engine.model.n_slots == 8
    texts = [
        "SELECT name FROM users",
        "The quick brown fox jumps over",
        "int main(void) {",
        "def fibonacci(n):\n    return",
        "import numpy as np\nx =",
        "fn main() {\n    let",
    ]
    prompts = [engine.tokenizer.encode(t) for t in texts]  # 6 distinct prompts > max_batch, <= cache_slots
    for i, p in enumerate(prompts):  # all at once: they queue and are admitted max_batch at a time
        engine.add_request(f"a{i}", p, greedy(max_tokens=5))
    while engine.has_unfinished():
        engine.step()
    extra = engine.tokenizer.encode(" x")[-1]
    longer = [p + [extra] for p in prompts]  # each editor types one more token
    before, hits = engine.stats.prefill_tokens, engine.stats.prefix_cache_hits
    warm = [engine.generate(p, greedy(max_tokens=6))[0] for p in longer]
    assert engine.stats.prefix_cache_hits == hits + len(prompts)
    assert engine.stats.prefill_tokens - before == len(prompts)  # only the one new token of each
    assert len({p[0] for p in longer}) == len(longer)  # no two share a prefix: a fresh engine runs them cold
    cold_engine = tiny_engine(max_batch=2)
    for p, w in zip(longer, warm, strict=True):
        [cold] = cold_engine.generate(p, greedy(max_tokens=6))
        assert w.token_ids == cold.token_ids
        assert w.token_logprobs == pytest.approx(cold.token_logprobs, abs=1e-4)
    assert cold_engine.stats.prefix_cache_hits == 0


def test_prompts_that_only_begin_alike_both_stay_cached(tiny_engine):
    engine = tiny_engine(max_batch=1, cache_slots=3)
    enc = engine.tokenizer.encode
    a = enc("import os\nimport sys\n\ndef main():\n    print(sys.argv)")
    b = a[:2] + enc(" SELECT name FROM users WHERE id = 1")  # shares a's first 2 tokens only
    for p in (a, b):
        engine.generate(p, greedy(max_tokens=4))
    extra = enc(" x")[-1]
    before = engine.stats.prefill_tokens
    warm = [engine.generate(p + [extra], greedy(max_tokens=5))[0] for p in (a, b)]
    assert (
        engine.stats.prefill_tokens - before == 2
    )  # b's prefill copied the shared 2 tokens, a kept its slot
    for p, w in zip((a, b), warm, strict=True):
        [cold] = tiny_engine(max_batch=1).generate(p + [extra], greedy(max_tokens=5))
        assert w.token_ids == cold.token_ids
        assert w.token_logprobs == pytest.approx(cold.token_logprobs, abs=1e-4)


def test_n_samples_get_their_slots_when_the_cache_is_as_small_as_the_batch(tiny_engine):
    """A prompt that only begins like a cached one copies the shared prefix to another idle slot, but not when that
    leaves too few slots for its samples (cache_slots == max_batch): it then gets all n, it does not lose one."""
    engine = tiny_engine(max_batch=2, cache_slots=2)
    enc = engine.tokenizer.encode
    a, b = enc("import os\nimport sys\n\ndef main():\n    print(sys.argv)"), enc("SELECT name FROM users")
    for prompt in (a, b, a):  # slot 0 holds a (recently used), slot 1 holds b (least recently used)
        engine.generate(prompt, greedy(max_tokens=4))
    p = a[:2] + enc(" The quick brown fox jumps")  # shares only a's first 2 tokens
    params = SamplingParams(max_tokens=4, temperature=1.0, n=2, seed=1, token_healing=False)
    assert [c.index for c in engine.generate(p, params)] == [0, 1]


def test_cache_slots_default_and_bounds(tiny_engine):
    from model_backend.slots import CACHE_SLOTS_PER_BATCH

    engine = tiny_engine(max_batch=3)
    assert engine.cache_slots == CACHE_SLOTS_PER_BATCH * 3  # the tiny model's slots fit easily
    assert engine.kv_bytes_per_slot() > 0
    with pytest.raises(ValueError, match="cache_slots"):
        tiny_engine(max_batch=4, cache_slots=2)


def test_concurrent_requests_batch_like_each_alone(tiny_engine):
    engine = tiny_engine(max_batch=4)
    prompts = ["SELECT name", "The quick brown fox jumps over", "int main(void) {"]
    alone = [tiny_engine(max_batch=4).generate(p, greedy(max_tokens=9))[0].token_ids for p in prompts]
    for i, p in enumerate(prompts):
        engine.add_request(f"r{i}", p, greedy(max_tokens=9))
    texts: dict[str, str] = {}
    done: dict[str, list[int]] = {}
    while engine.has_unfinished():
        for o in engine.step():
            texts[o.request_id] = texts.get(o.request_id, "") + o.delta
            if o.finished:
                done[o.request_id] = o.candidate.token_ids
                assert texts[o.request_id] == o.candidate.text  # the stream adds up to the text
    assert [done[f"r{i}"] for i in range(3)] == alone


def test_abort_frees_slots(tiny_engine):
    engine = tiny_engine(max_batch=2)
    engine.add_request("a", PROMPT, greedy(max_tokens=50))
    engine.step()
    assert engine.has_unfinished()
    engine.abort("a")
    assert not engine.has_unfinished()
    engine.abort("never-existed")  # harmless
    assert len(engine.generate(PROMPT, SamplingParams(max_tokens=3, n=2, seed=0))) == 2


def test_beam_width_one_is_greedy(tiny_engine):
    engine = tiny_engine()
    [g] = engine.generate(PROMPT, greedy(max_tokens=10))
    [b] = engine.generate(PROMPT, greedy(max_tokens=10, beam_width=1))
    [b1] = engine.generate(
        PROMPT, SamplingParams(max_tokens=10, temperature=0.0, beam_width=1, n=1, token_healing=False)
    )
    assert g.token_ids == b.token_ids == b1.token_ids


def test_beam_search_candidates(tiny_engine):
    engine = tiny_engine(max_batch=4)
    cands = engine.generate(PROMPT, greedy(max_tokens=6, beam_width=3, n=3))
    assert len(cands) == 3
    assert len({tuple(c.token_ids) for c in cands}) == 3
    means = [c.mean_logprob for c in cands]
    assert means == sorted(means, reverse=True)
    ids = engine.tokenizer.encode(PROMPT)
    for c in cands:  # the KV reordering between beams keeps every beam's log-probs exact
        assert c.token_logprobs == pytest.approx(model_logprobs(engine, ids, c.token_ids), abs=1e-4)
    [g] = engine.generate(PROMPT, greedy(max_tokens=6))
    if g.finish_reason == "length" and cands[0].finish_reason == "length":
        assert sum(cands[0].token_logprobs) >= sum(g.token_logprobs) - 1e-4


def test_prompt_over_context_is_a_clear_error(tiny_engine):
    engine = tiny_engine(max_seq_len=64)
    with pytest.raises(ValueError, match="prompt is .* tokens but the context holds 64"):
        engine.add_request("long", "int main(void) { return 0; }\n" * 40, greedy())
    assert not engine.has_unfinished()


def test_bad_params_are_clear_errors(tiny_engine):
    engine = tiny_engine(max_batch=2)
    with pytest.raises(ValueError, match="top_p"):
        engine.add_request("x", PROMPT, SamplingParams(top_p=0.0))
    with pytest.raises(ValueError, match="slots"):
        engine.add_request("y", PROMPT, SamplingParams(n=3))
    with pytest.raises(ValueError, match="empty prompt"):
        engine.add_request("z", "", SamplingParams())


def test_generation_stops_at_the_cache_end(tiny_engine):
    engine = tiny_engine(max_seq_len=24)
    ids = engine.tokenizer.encode(PROMPT)
    [c] = engine.generate(ids, greedy(max_tokens=100))
    assert len(ids) + len(c.token_ids) <= 24


def test_token_healing_backs_off_and_constrains(tiny_engine):
    engine = tiny_engine()
    tok = engine.tokenizer
    ids = tok.encode("int main(void) { return 0; }\nint ma")
    last = tok.token_bytes(ids[-1])
    options = engine.healer.tokens_starting_with(last)
    assert len(options) > 1, "the prompt must end in a token that others extend"
    healed, removed, allowed = engine.healer.heal(ids)
    assert healed == ids[:-1] and removed == last
    assert set(allowed.tolist()) == set(options)
    # the output continues the prompt text: it never repeats the removed text
    [c] = engine.generate(
        "int main(void) { return 0; }\nint ma", SamplingParams(max_tokens=5, temperature=0.0)
    )
    first = tok.token_bytes(c.token_ids[0])
    assert first.startswith(last)
    assert c.text.encode().startswith(first[len(last) :].decode("utf-8", "ignore").encode())


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_stop_strings_cut_exactly(tiny_engine, data):
    engine = _stop_engine(tiny_engine)
    ref = _stop_reference(engine)
    start = data.draw(st.integers(0, len(ref) - 1))
    stop = ref[start : start + data.draw(st.integers(1, 4))]
    extra = data.draw(st.sampled_from(["", "\u00a7never\u00a7"]))
    engine.add_request("s", PROMPT, greedy(max_tokens=20, stop=[stop] + ([extra] if extra else [])))
    streamed, final = "", None
    while engine.has_unfinished():
        for o in engine.step():
            streamed += o.delta
            if o.finished:
                final = o.candidate
    assert final is not None
    assert final.text == ref[: ref.find(stop)]
    assert final.finish_reason == "stop"
    assert streamed == final.text  # never streamed text that turned out to be part of a stop string


_cache: dict[str, object] = {}


def _stop_engine(tiny_engine):
    if "engine" not in _cache:
        _cache["engine"] = tiny_engine("starcoder2", max_batch=2)
    return _cache["engine"]


def _stop_reference(engine) -> str:
    if "ref" not in _cache:
        _cache["ref"] = engine.generate(PROMPT, greedy(max_tokens=20))[0].text
    return _cache["ref"]


def test_stop_helpers():
    assert find_stop("abc\n\ndef", ["\n\n", "de"]) == 3
    assert find_stop("abc", ["x"]) == -1
    assert stop_holdback("foo\n", ["\n\n"]) == 1
    assert stop_holdback("foo", ["\n\n"]) == 0
    assert stop_holdback("a cla", ["class "]) == 3


def test_device_choice():
    from model_backend.engine import resolve_device

    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="unknown device"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA"):
            resolve_device("cuda")


# -- the default model (SmolLM2-135M GGUF), one Engine per session ---------------------------------------------

FIB = "def fibonacci(n):\n"


def test_default_greedy_is_deterministic_and_sensible(default_engine):
    params = SamplingParams(max_tokens=24, temperature=0.0)
    [a] = default_engine.generate(FIB, params)
    [b] = default_engine.generate(FIB, params)
    assert a.token_ids == b.token_ids and a.text == b.text
    assert a.text.startswith("    ")  # the body is indented
    assert "return" in a.text or "if" in a.text
    assert a.mean_logprob < 0
    assert a.tokens and "".join(a.tokens).endswith(a.text[-3:])


def test_default_token_healing_keeps_the_block_open(default_engine):
    # the case: a prompt ending in a bare newline before the body
    prompt = 'def add(a, b):\n    """Return the sum of a and b."""\n'
    [healed] = default_engine.generate(prompt, SamplingParams(max_tokens=12, temperature=0.0))
    assert healed.text.startswith("    "), healed.text
    ids = default_engine.tokenizer.encode(prompt)
    _, removed, allowed = default_engine.healer.heal(ids)
    assert removed == b"\n" and allowed is not None and len(allowed) > 1


def test_default_token_healing_of_half_an_identifier(default_engine):
    prompt = "def fibonacci(n):\n    if n < 2:\n        return n\n    return fibonac"
    ids = default_engine.tokenizer.encode(prompt)
    healed, removed, _ = default_engine.healer.heal(ids)
    assert len(healed) < len(ids) - 1 and removed.endswith(b"ac")  # two tokens backed off ("on" + "ac")
    [c] = default_engine.generate(prompt, SamplingParams(max_tokens=6, temperature=0.0))
    assert c.text.startswith("ci(")  # the identifier is completed, not restarted
    assert "".join(c.tokens) == c.text  # token texts leave out the healed bytes too


def test_default_token_healing_regenerates_the_removed_bytes_whole(default_engine):
    # "):" is backed off; taking only ")" first (a piece of it) put the model off its own tokenization: greedy
    # went on ":**" and 4 of 8 samples were garbage. The first token must start with all the removed bytes.
    prompt = "def fibonacci(n):"
    [greedy] = default_engine.generate(prompt, SamplingParams(max_tokens=6, temperature=0.0))
    samples = default_engine.generate(
        prompt, SamplingParams(max_tokens=6, temperature=0.8, top_p=0.95, n=8, seed=5)
    )
    for c in [greedy, *samples]:
        assert c.text.startswith("\n"), c.text


def test_default_samples_and_prefix_reuse(default_engine):
    e = default_engine
    params = SamplingParams(max_tokens=8, temperature=0.8, top_p=0.95, n=4, seed=11)
    first = e.generate(FIB, params)
    assert len(first) == 4
    assert [c.text for c in e.generate(FIB, params)] == [c.text for c in first]  # seeded
    before, reused = e.stats.prefill_tokens, e.stats.prefix_tokens_reused
    prompt = "import math\n\n\ndef area(r):\n    return math.pi * r"
    e.generate(prompt, SamplingParams(max_tokens=4, temperature=0.0))
    cold = e.stats.prefill_tokens - before
    [warm] = e.generate(prompt + " * r", SamplingParams(max_tokens=4, temperature=0.0))
    assert e.stats.prefix_tokens_reused > reused
    assert e.stats.prefill_tokens - before - cold <= 3


def test_prefill_and_decode_thread_counts(tiny_engine):
    before = torch.get_num_threads()
    try:
        engine = tiny_engine(prefill_threads=2, decode_threads=1)
        engine.add_request("t", PROMPT, greedy(max_tokens=4))
        engine.step()  # admission: the prefill
        assert torch.get_num_threads() == 2
        engine.step()  # a decode step
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_background_packing_serves_at_once_and_converges(tiny_dir):
    ref = Engine.load(str(tiny_dir("llama")), device="cpu", quantize="fp16", progress=False)
    eng = Engine.load(
        str(tiny_dir("llama")), device="cpu", quantize="fp16", progress=False, pack_in_background=True
    )
    eng.generate(PROMPT, greedy(max_tokens=3))  # serves while (or after) packing
    eng.wait_packed()
    assert eng.packing_done
    assert not any(isinstance(m, torch.nn.Linear) for m in eng.model.modules())
    [a] = eng.generate(PROMPT, greedy(max_tokens=8))
    [b] = ref.generate(PROMPT, greedy(max_tokens=8))
    assert a.token_ids == b.token_ids


def test_beam_search_respects_stop_strings(tiny_engine):
    engine = tiny_engine(max_batch=4)
    [free] = engine.generate(PROMPT, greedy(max_tokens=8, beam_width=2))
    assert len(free.text) >= 3
    stop = free.text[1:3]
    cands = engine.generate(PROMPT, greedy(max_tokens=8, beam_width=2, n=2, stop=[stop]))
    assert cands
    for c in cands:
        assert stop not in c.text
        assert c.finish_reason in ("stop", "length")


def test_top_logprobs_per_token(default_engine: Engine) -> None:
    """top_logprobs=k: each token carries the k most likely (text, log-prob) of its step, most likely first;
    greedy and beam search both report them, and the chosen token's log-prob is among them."""
    (c,) = default_engine.generate(PROMPT, greedy(max_tokens=6, top_logprobs=4))
    assert c.top_logprobs is not None and len(c.top_logprobs) == len(c.token_ids)
    for chosen, step in zip(c.token_logprobs, c.top_logprobs, strict=True):
        values = [v for _, v in step]
        assert len(step) == 4 and values == sorted(values, reverse=True)
        assert abs(values[0] - chosen) < 1e-6
    (b,) = default_engine.generate(PROMPT, greedy(max_tokens=4, beam_width=2, top_logprobs=2))
    assert b.top_logprobs is not None and len(b.top_logprobs) == len(b.token_ids)
    assert all(
        any(abs(v - lp) < 1e-6 for _, v in step)
        for lp, step in zip(b.token_logprobs, b.top_logprobs, strict=True)
    )
    assert default_engine.generate(PROMPT, greedy(max_tokens=2))[0].top_logprobs is None
    with pytest.raises(ValueError, match="top_logprobs"):
        SamplingParams(top_logprobs=21).validate()


def test_a_long_prompt_is_prefilled_between_the_decode_steps_of_others(default_engine: Engine) -> None:
    """While A decodes, B's ~580-token prompt goes in INTERLEAVE_CHUNK tokens per step: A keeps getting a token
    every step, and B's greedy answer is the same as when it runs alone."""
    from model_backend import engine as engine_mod

    eng = default_engine
    long_prompt = " ".join(f"x{i} = {i} * 2" for i in range(60))
    assert len(eng.tokenizer.encode(long_prompt)) > 3 * engine_mod.INTERLEAVE_CHUNK
    eng.add_request(
        "a",
        "1, 2, 3, 4, 5, 6, 7, 8, 9, 10,",
        SamplingParams(max_tokens=60, temperature=0.0, token_healing=False),
    )
    while not any(o.request_id == "a" for o in eng.step()):
        pass
    eng.add_request("b", long_prompt, greedy(max_tokens=6))
    a_before_b, b_text, b_done, steps = 0, "", False, 0
    while not b_done:
        outs = eng.step()
        steps += 1
        b_outs = [o for o in outs if o.request_id == "b"]
        if not b_text and not b_outs:  # B still prefilling: A must still be served
            a_before_b += sum(1 for o in outs if o.request_id == "a")
        for o in b_outs:
            b_text += o.delta
            b_done = b_done or o.finished
        assert steps < 200
    assert a_before_b >= 3  # several of A's tokens came while B's prompt went in, chunk by chunk
    eng.abort("a")
    assert b_text == eng.generate(long_prompt, greedy(max_tokens=6))[0].text


def test_a_warm_keystroke_overtakes_a_cold_prompt(default_engine: Engine) -> None:
    """While a stream decodes, prefill is shortest-remaining-first in INTERLEAVE_CHUNK steps: a prompt that is all
    in the prefix cache but a few tokens gets its first token while another file's long prompt is still going in."""
    eng = default_engine
    warm = "def add(a, b):\n    return a + b\n\n\ndef sub(a, b):\n"
    eng.generate(warm, greedy(max_tokens=2))  # cached now
    eng.add_request("stream", "1, 2, 3, 4, 5, 6, 7, 8, 9, 10,", greedy(max_tokens=100))
    while not any(o.request_id == "stream" for o in eng.step()):
        pass
    cold = " ".join(f"y{i} = {i} + 1" for i in range(60))
    eng.add_request("cold", cold, greedy(max_tokens=2))
    eng.step()  # the cold prompt's first chunk
    eng.add_request("warm", warm + "    return", greedy(max_tokens=2))
    order: list[str] = []
    while "cold" not in order:
        for o in eng.step():
            if o.request_id in ("warm", "cold") and o.request_id not in order:
                order.append(o.request_id)
    assert order == ["warm", "cold"]
    for rid in ("stream", "cold", "warm"):
        eng.abort(rid)
