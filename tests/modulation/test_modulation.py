"""The modulation core: utility noise, focus, keyed noise and the mixed-batch pipeline."""

from __future__ import annotations

import math

import pytest
import torch

from service.modulation import (
    BatchModulation,
    FocusEntry,
    FreshNoise,
    KeyedNoise,
    ModulationArgumentError,
    add_utility_noise,
    apply_focus,
    focus_field,
    modulate,
)
from service.modulation import noise as noise_module

pytestmark = pytest.mark.unit


@pytest.fixture
def keyed() -> KeyedNoise:
    return KeyedNoise(b"test-secret")


@pytest.fixture
def logits() -> torch.Tensor:
    return torch.randn(16, 10, generator=torch.Generator().manual_seed(1)) * 4


def _seeds(keyed: KeyedNoise, n: int, tier: str = "silver") -> torch.Tensor:
    return keyed.seeds([tier] * n)


def test_sigma_zero_rows_are_bit_identical(logits: torch.Tensor) -> None:
    logits = logits.clone()
    logits[0, 0] = -0.0
    sigma = torch.tensor([0.0, 3.0] * 8)
    out = add_utility_noise(logits, sigma, torch.randn_like(logits))
    zero = sigma == 0
    assert torch.equal(out[zero].view(torch.int32), logits[zero].view(torch.int32))
    assert not torch.equal(out[~zero], logits[~zero])


@pytest.mark.parametrize("shape", [(4, 10), (2, 11, 6, 5)])
def test_functions_do_not_modify_input(keyed: KeyedNoise, shape: tuple[int, ...]) -> None:
    z = torch.randn(*shape)
    before = z.clone()
    field = focus_field(
        [[FocusEntry(1, 1, 2.0)]] * shape[0],
        shape[1],
        spatial=shape[2:] if len(shape) == 4 else None,
    )
    params = BatchModulation(torch.full((shape[0],), 2.0), _seeds(keyed, shape[0]), field)
    for source in (keyed, FreshNoise()):
        modulate(z, params, source)
    add_utility_noise(z, 1.0, torch.randn_like(z))
    apply_focus(z, field, torch.rand_like(z))
    assert torch.equal(z, before)


@pytest.mark.parametrize("shape", [(12, 10), (6, 11, 8, 8)])
def test_mixed_tier_batch_equals_rows_one_by_one(keyed: KeyedNoise, shape: tuple[int, ...]) -> None:
    z = torch.randn(*shape, generator=torch.Generator().manual_seed(3)) * 5
    n = shape[0]
    pairs = [["gold", "silver", "bronze"][i % 3] for i in range(n)]
    sigma = torch.tensor([[0.0, 2.0, 8.0][i % 3] for i in range(n)])
    entries = [
        [FocusEntry(i % shape[1], 1 if i % 2 else -1, 3.0)] if i % 2 else [] for i in range(n)
    ]
    spatial = shape[2:] if len(shape) == 4 else None
    batch = modulate(
        z,
        BatchModulation(sigma, keyed.seeds(pairs), focus_field(entries, shape[1], spatial)),
        keyed,
    )
    for i in range(n):
        one = modulate(
            z[i : i + 1],
            BatchModulation(
                sigma[i : i + 1],
                keyed.seeds(pairs[i : i + 1]),
                focus_field(entries[i : i + 1], shape[1], spatial),
            ),
            keyed,
        )
        assert torch.equal(one[0], batch[i]), f"row {i} differs"


def test_keyed_noise_is_deterministic_and_keyed(keyed: KeyedNoise, logits: torch.Tensor) -> None:
    sigma = torch.full((logits.shape[0],), 4.0)
    a = modulate(logits, BatchModulation(sigma, _seeds(keyed, 16)), keyed)
    b = modulate(logits, BatchModulation(sigma, _seeds(keyed, 16)), keyed)
    assert torch.equal(a, b)
    other_tier = modulate(logits, BatchModulation(sigma, _seeds(keyed, 16, tier="bronze")), keyed)
    other_secret = KeyedNoise(b"another-secret")
    other = modulate(logits, BatchModulation(sigma, _seeds(other_secret, 16)), other_secret)
    for c in (other_tier, other):
        assert not torch.isclose(a, c).all(dim=1).any(), "each row must get different noise"


def test_keyed_noise_survives_tiny_jitter(keyed: KeyedNoise, logits: torch.Tensor) -> None:
    sigma = torch.full((16,), 4.0)
    seeds = _seeds(keyed, 16)
    base = keyed.sample(logits, seeds, sigma, 1)[0]
    jittered = keyed.sample(logits + 1e-3 * torch.randn_like(logits), seeds, sigma, 1)[0]
    same = torch.isclose(base, jittered).all(dim=1).float().mean()
    assert same >= 0.9


def test_keyed_noise_is_standard_normal(keyed: KeyedNoise) -> None:
    z = torch.randn(4000, 10) * 10
    noise = keyed.sample(z, _seeds(keyed, 4000), torch.full((4000,), 2.0), 1)[0]
    assert abs(float(noise.mean())) < 0.05
    assert abs(float(noise.std()) - 1.0) < 0.05
    # Different rows get (nearly) uncorrelated noise.
    corr = torch.corrcoef(noise[:, :2].t())[0, 1]
    assert abs(float(corr)) < 0.05


@pytest.mark.parametrize("shape", [(16, 10), (2, 11, 6, 5)])
def test_keyed_streams_read_the_tables_at_their_own_hashes(
    keyed: KeyedNoise, shape: tuple[int, ...]
) -> None:
    """Stream s is table a at _combine(h, 2s + 1) plus table b at _combine(h, 2s + 2), over
    √2; the indices of all streams are hashed in one pass, which must change nothing."""
    z = torch.randn(*shape, generator=torch.Generator().manual_seed(3)) * 4
    seeds, scale = _seeds(keyed, shape[0]), torch.full((shape[0],), 2.0)
    streams = keyed.sample(z, seeds, scale, 2)
    table_a, table_b, _ = keyed._tables(shape[1], z.device)
    h = keyed.digest(z, seeds, scale).reshape(-1)
    for s, noise in enumerate(streams):
        i = noise_module._combine(h, 2 * s + 1) % table_a.shape[0]
        j = noise_module._combine(h, 2 * s + 2) % table_a.shape[0]
        want = (table_a[i] + table_b[j]) * (1 / math.sqrt(2))
        if len(shape) == 4:
            want = want.view(shape[0], *shape[2:], shape[1]).permute(0, 3, 1, 2)
        assert torch.equal(noise, want)


def test_keyed_repr_hides_secret(keyed: KeyedNoise) -> None:
    assert "test-secret" not in repr(keyed)


@pytest.mark.parametrize("direction", [1, -1])
def test_focus_signs_are_respected(keyed: KeyedNoise, direction: int) -> None:
    z = torch.randn(64, 10)
    field = focus_field([[FocusEntry(3, direction, 5.0)]] * 64, 10)
    out = modulate(z, BatchModulation(torch.zeros(64), _seeds(keyed, 64), field), keyed)
    delta = out - z
    assert torch.equal(delta[:, [0, 1, 2, 4, 5, 6, 7, 8, 9]], torch.zeros(64, 9))
    assert bool((delta[:, 3] * direction >= 0).all())
    assert float(delta[:, 3].abs().mean()) > 1.0


def test_focus_all_classes_and_region() -> None:
    field = focus_field([[FocusEntry(None, 1, 2.0, region=(1, 2, 3, 4))]], 3, spatial=(5, 6))
    assert field is not None and field.shape == (1, 3, 5, 6)
    assert bool((field[0, :, 2:4, 1:3] == 2.0).all())
    assert float(field.sum()) == 2.0 * 3 * 2 * 2
    assert focus_field([[], []], 3) is None


@pytest.mark.parametrize(
    ("call", "argument"),
    [
        (lambda: add_utility_noise(torch.zeros(2, 3), -1.0, torch.zeros(2, 3)), "sigma"),
        (lambda: add_utility_noise(torch.zeros(2, 3), math.nan, torch.zeros(2, 3)), "sigma"),
        (
            lambda: add_utility_noise(torch.tensor([[0.0, math.nan]]), 1.0, torch.zeros(1, 2)),
            "logits",
        ),
        (lambda: focus_field([[FocusEntry(7, 1, 1.0)]], 3), "class"),
        (lambda: focus_field([[FocusEntry(0, 1, 1.0, (0, 0, 9, 2))]], 3, (4, 4)), "region"),
        (lambda: focus_field([[FocusEntry(0, 1, 1.0, (0, 0, 2, 2))]], 3), "region"),
        (lambda: FocusEntry(0, 1, -2.0), "strength"),
        (lambda: FocusEntry.parse(0, "sideways", 1.0), "direction"),
        (lambda: KeyedNoise(b""), "secret"),
    ],
)
def test_bad_arguments_name_the_argument(call: object, argument: str) -> None:
    with pytest.raises(ModulationArgumentError) as err:
        call()  # type: ignore[operator]
    assert err.value.argument == argument
    assert f"`{argument}`" in str(err.value)
