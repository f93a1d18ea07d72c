"""The decode loop on the session's tiny LM (tests/conftest.py): rows decoded together with one
KV cache and modulation at every step, each row as it would be alone."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

pytest.importorskip("transformers")

from service.generation import DecodeBatch, GenerationRequest, TokenEvent, generate, stream
from service.models.causal_lm import CausalLM
from service.models.errors import InputError
from service.modulation import FreshNoise, KeyedNoise

pytestmark = [pytest.mark.unit, pytest.mark.usefixtures("one_torch_thread")]

PROMPTS = [
    "the cow says",
    "count up: three four",
    "a banana is",
    "two plus three is",
    "anna sees a",
    "the",
]


ask = GenerationRequest.for_prompt


@pytest.fixture(scope="session")
def lm(tiny_lm_dir: Path) -> CausalLM:
    return CausalLM.load(tiny_lm_dir)


@pytest.fixture
def keyed() -> KeyedNoise:
    return KeyedNoise(b"test secret")


def _hf_greedy(lm: CausalLM, prompts: list[list[int]], max_new_tokens: int) -> list[list[int]]:
    """`transformers` greedy decoding of left-padded prompts, cut after the first EOS."""
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), lm.pad_token_id)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, width - len(p) :] = torch.tensor(p)
        mask[i, width - len(p) :] = 1
    out = lm.model.generate(
        input_ids=ids,
        attention_mask=mask,
        do_sample=False,
        max_new_tokens=max_new_tokens,
        pad_token_id=lm.pad_token_id,
    )
    rows = []
    for row in out[:, width:].tolist():
        cut = next((i + 1 for i, t in enumerate(row) if t in lm.eos_token_ids), len(row))
        rows.append(row[:cut])
    return rows


@pytest.mark.parametrize(
    ("field", "value"),
    [("temperature", -1.0), ("top_p", 0.0), ("sigma", float("nan")), ("max_new_tokens", 0)],
)
def test_bad_request_fields_are_named(field: str, value: float) -> None:
    knobs: dict[str, Any] = {field: value}
    with pytest.raises(InputError, match=field):
        GenerationRequest(prompt_ids=(0, 5), **knobs)


def test_prompt_that_overflows_the_context_is_refused(lm: CausalLM) -> None:
    request = GenerationRequest(prompt_ids=(0,) * 100, max_new_tokens=50)
    with pytest.raises(InputError, match="max_new_tokens"):
        generate(lm, [request], FreshNoise())


# Decoding ----------------------------------------------------------------------------------------


def test_sigma_zero_is_plain_greedy_decoding_in_a_mixed_length_batch(lm: CausalLM) -> None:
    prompts = [lm.encode(p) for p in PROMPTS]
    assert len({len(p) for p in prompts}) > 2  # left padding is exercised
    requests = [GenerationRequest(tuple(p), max_new_tokens=14) for p in prompts]
    batch = DecodeBatch(lm, requests, FreshNoise())
    while not batch.done:
        batch.step()
    ours = [batch.tokens(row) for row in range(batch.size)]
    assert ours == _hf_greedy(lm, prompts, 14)  # the same padded batch in transformers
    assert ours == [_hf_greedy(lm, [p], 14)[0] for p in prompts]  # each prompt alone
    assert any(len(t) > 3 for t in ours)
    # Keyed noise at σ = 0 leaves every step exact too.
    assert generate(lm, requests, KeyedNoise(b"k")) == batch.results()


def test_rows_finish_on_their_own_budget_or_eos(lm: CausalLM) -> None:
    requests = [
        ask(lm, "the cow says", max_new_tokens=30),
        ask(lm, "anna", max_new_tokens=2),
    ]
    batch = DecodeBatch(lm, requests, FreshNoise())
    first = batch.step()
    assert all(t is not None for t in first)
    second = batch.step()
    assert batch.finish_reason(1) == "length" and len(batch.tokens(1)) == 2
    assert second[1] is not None and batch.running() == [0]
    assert batch.step()[1] is None  # a finished row stops counting
    while not batch.done:
        batch.step()
    results = batch.results()
    assert results[0].finish_reason == "stop"  # the sentence ends with EOS ...
    assert batch.tokens(0)[-1] in lm.eos_token_ids
    assert list(results[0].token_ids) == batch.tokens(0)[:-1]  # ... which is not in the text
    assert results[0].text == lm.decode(results[0].token_ids) and results[0].text.endswith(".")
    assert results[1].finish_reason == "length" and len(results[1].token_ids) == 2


def test_same_request_with_keyed_noise_gives_the_same_text(lm: CausalLM, keyed: KeyedNoise) -> None:
    seed = keyed.tier_seed("silver")
    requests = [
        GenerationRequest.for_prompt(
            lm, p, max_new_tokens=12, sigma=2.0, seed=seed, temperature=t, top_p=0.9
        )
        for p in PROMPTS[:3]
        for t in (0.0, 1.0)
    ]
    first = generate(lm, requests, keyed)
    second = generate(lm, requests, keyed)
    assert first == second
    events = list(stream(lm, requests, keyed))
    assert all(isinstance(e, TokenEvent) for e in events)
    streamed: list[list[int]] = [[] for _ in requests]
    for event in events:
        if event.finish_reason != "stop":
            streamed[event.row].append(event.token_id)
    assert streamed == [list(r.token_ids) for r in first]
    assert sum(e.finish_reason is not None for e in events) == len(requests)


def test_different_tiers_give_different_text_at_large_sigma(
    lm: CausalLM, keyed: KeyedNoise
) -> None:
    def texts(tier: str) -> list[str]:
        seed = keyed.tier_seed(tier)
        requests = [ask(lm, p, max_new_tokens=10, sigma=8.0, seed=seed) for p in PROMPTS]
        return [r.text for r in generate(lm, requests, keyed)]

    a, b = texts("bronze"), texts("trial")
    assert sum(x != y for x, y in zip(a, b, strict=True)) >= len(PROMPTS) - 1
    clean = [r.text for r in generate(lm, [ask(lm, p, max_new_tokens=10) for p in PROMPTS], keyed)]
    assert a != clean


def test_sampling_depends_on_the_sampling_seed_only(lm: CausalLM) -> None:
    def text(sampling_seed: int, others: list[str]) -> str:
        requests = [
            GenerationRequest.for_prompt(
                lm, "the", max_new_tokens=12, temperature=1.5, sampling_seed=sampling_seed
            )
        ] + [ask(lm, p, max_new_tokens=5) for p in others]
        return generate(lm, requests, FreshNoise())[0].text

    texts = {text(s, []) for s in range(6)}
    assert len(texts) > 1
    assert text(3, []) == text(3, PROMPTS[:3])  # the batch around a request changes nothing


def test_focus_up_raises_the_frequency_of_the_token(lm: CausalLM, keyed: KeyedNoise) -> None:
    token = lm.token_id("red")
    seed = keyed.tier_seed("gold")

    def count(focus: tuple[object, ...]) -> int:
        requests = [
            GenerationRequest.for_prompt(
                lm, p, max_new_tokens=12, seed=seed, focus=focus
            )  # σ = 0: focus only
            for p in PROMPTS
        ]
        return sum(r.token_ids.count(token) for r in generate(lm, requests, keyed))

    before = count(())
    after = count((lm.focus_entry("red", "up", 8.0),))
    assert after >= before + 3, (before, after)


# Cancelling -------------------------------------------------------------------------------------


def test_a_cancelled_row_leaves_the_batch_and_the_others_go_on(lm: CausalLM) -> None:
    requests = [ask(lm, p, max_new_tokens=10, stop_on_eos=False) for p in PROMPTS[:3]]
    alone = generate(lm, [requests[0], requests[2]], FreshNoise())
    batch = DecodeBatch(lm, requests, FreshNoise())
    batch.step()
    assert batch.forward_seconds > 0 and batch.modulation_seconds > 0
    batch.cancel(1)
    assert batch.running() == [0, 2] and batch.finish_reason(1) == "cancelled"
    while not batch.done:
        assert batch.step()[1] is None  # no step is spent on the cancelled row
    results = batch.results()
    assert [results[0], results[2]] == alone
    assert len(results[1].token_ids) == 1 and results[1].finish_reason == "cancelled"
    batch.cancel(1)  # a finished row stays as it is
    assert batch.finish_reason(1) == "cancelled"
    with pytest.raises(InputError, match="row"):
        batch.cancel(3)


def test_rows_cancelled_before_the_first_step_never_run(lm: CausalLM) -> None:
    requests = [ask(lm, p, max_new_tokens=4) for p in PROMPTS[:2]]
    batch = DecodeBatch(lm, requests, FreshNoise())
    batch.cancel(0)
    batch.cancel(1)
    assert batch.done and batch.step() == [None, None]
    assert [r.token_ids for r in batch.results()] == [(), ()]


@pytest.mark.parametrize(("field", "value"), [("top_p", 1e-300), ("temperature", 1e-38)])
def test_float32_edge_knobs_decode_greedily(lm: CausalLM, field: str, value: float) -> None:
    knobs: dict[str, Any] = {"temperature": 1.0, field: value}
    prompts = PROMPTS[:3]
    edge = [ask(lm, p, max_new_tokens=12, sampling_seed=i, **knobs) for i, p in enumerate(prompts)]
    greedy = [ask(lm, p, max_new_tokens=12) for p in prompts]
    assert [r.token_ids for r in generate(lm, edge, FreshNoise())] == [
        r.token_ids for r in generate(lm, greedy, FreshNoise())
    ]


# Joining a running batch -------------------------------------------------------------------------


def test_rows_that_join_a_running_batch_get_what_they_get_alone(
    lm: CausalLM, keyed: KeyedNoise
) -> None:
    seed = keyed.tier_seed("silver")

    def request(prompt: str, budget: int, temperature: float) -> GenerationRequest:
        return ask(
            lm,
            prompt,
            max_new_tokens=budget,
            sigma=1.0,
            seed=seed,
            temperature=temperature,
            sampling_seed=len(prompt),
            stop_on_eos=False,
        )

    first = [request(PROMPTS[0], 10, 0.0), request(PROMPTS[5], 4, 1.0)]
    later = [request(PROMPTS[1], 10, 1.0), request(PROMPTS[2], 12, 0.0)]
    last = [request(PROMPTS[3], 6, 0.8)]
    batch = DecodeBatch(lm, first, keyed)
    for _ in range(3):
        batch.step()
    assert batch.add(later) == [2, 3]
    assert batch.running() == [0, 1, 2, 3]
    for _ in range(5):  # row 1 ends meanwhile: its columns stay while row 0 needs them
        batch.step()
    assert batch.add(last) == [4]
    while not batch.done:
        batch.step()
    together = batch.results()
    alone = [generate(lm, [r], keyed)[0] for r in first + later + last]
    assert together == alone


def test_a_batch_that_ended_takes_new_rows(lm: CausalLM) -> None:
    batch = DecodeBatch(lm, [ask(lm, "anna", max_new_tokens=2)], FreshNoise())
    while not batch.done:
        batch.step()
    (row,) = batch.add([ask(lm, "the cow says", max_new_tokens=5, stop_on_eos=False)])
    assert row == 1 and not batch.done
    while not batch.done:
        batch.step()
    assert len(batch.results()[1].token_ids) == 5
    assert batch.results()[1] == generate(lm, [batch.requests[1]], FreshNoise())[0]


def test_a_row_cancelled_before_it_joins_never_runs(lm: CausalLM) -> None:
    batch = DecodeBatch(lm, [ask(lm, "the", max_new_tokens=6, stop_on_eos=False)], FreshNoise())
    batch.step()
    (row,) = batch.add([ask(lm, "anna", max_new_tokens=6)])
    batch.cancel(row)
    assert batch.running() == [0]
    while not batch.done:
        assert batch.step()[row] is None
    assert batch.results()[row].token_ids == () and batch.finish_reason(row) == "cancelled"


def test_a_malformed_joiner_is_refused_and_the_batch_goes_on(lm: CausalLM) -> None:
    batch = DecodeBatch(lm, [ask(lm, "the", max_new_tokens=4)], FreshNoise())
    with pytest.raises(InputError, match="max_new_tokens"):
        batch.add([GenerationRequest(prompt_ids=(0,) * 100, max_new_tokens=50)])
    assert batch.size == 1 and batch.can_join
    while not batch.done:
        batch.step()
