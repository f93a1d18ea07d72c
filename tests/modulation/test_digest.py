"""The replay digest: canonicalisation removes brightness and contrast, files round-trip, a tiny
training run works, and the shipped `digits` digest separates copies from distinct digits."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from service.models import heldout
from service.models.digests import digest_path
from service.modulation import DigestEncoder, ModulationArgumentError, load_digest, save_digest
from service.modulation.digest import canonicalise
from service.modulation.digest_training import augment, separation, train_digest

pytestmark = pytest.mark.unit


def test_canonicalise_removes_brightness_and_nearly_contrast() -> None:
    x = torch.rand(5, 1, 8, 8)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    base = canonicalise(x)
    assert torch.allclose(canonicalise(1.3 * x), base, atol=1e-5)
    # Contrast about the mean moves the centre of mass a little (the weights change).
    low = canonicalise(mean + 0.8 * (x - mean)).reshape(5, -1)
    cos = torch.nn.functional.cosine_similarity(low, base.reshape(5, -1), dim=1)
    assert bool((cos > 0.98).all()), cos


def test_a_digest_file_round_trips_and_a_wrong_file_is_named(tmp_path: Path) -> None:
    enc = DigestEncoder((1, 8, 8), dim=16, hidden=32, threshold=0.77).eval()
    save_digest(enc, tmp_path / "d.safetensors")
    back = load_digest(tmp_path / "d.safetensors")
    x = torch.rand(3, 1, 8, 8)
    assert torch.equal(back(x), enc(x))
    assert back.threshold == 0.77 and back.fingerprint() == enc.fingerprint()
    (tmp_path / "junk.safetensors").write_bytes(b"not a file")
    with pytest.raises(ModulationArgumentError, match="digest"):
        load_digest(tmp_path / "junk.safetensors")


def test_training_on_a_tiny_budget_gives_a_usable_digest() -> None:
    x = torch.rand(32, 1, 8, 8)
    seen: list[int] = []
    enc = train_digest(
        x, low=0.0, high=1.0, steps=3, batch=16, progress=lambda s, _: seen.append(s)
    )
    assert seen == [1, 2, 3]
    assert 0.5 <= enc.threshold <= 0.95
    out = enc(x)
    assert out.shape == (32, 64) and torch.allclose(out.norm(dim=1), torch.ones(32), atol=1e-5)


def test_the_shipped_digits_digest_keeps_copies_above_its_threshold_and_most_digits_below() -> None:
    path = digest_path("digits")
    assert path is not None, "the digits digest asset is missing (scripts/train_digest.py)"
    enc = load_digest(path)
    x, _ = heldout("digits")
    x = x[:200]
    figures = separation(enc, x, 0.0, 1.0, families=("brightness", "contrast", "jitter", "blur"))
    for family in ("brightness", "contrast", "jitter", "blur"):
        assert figures[family][1] > enc.threshold, (family, figures)
    # Most distinct digits sit below the threshold, so they keep independent noise.
    assert figures["nearest distinct"][0] < enc.threshold, figures
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        copies = (enc(augment(x, "drop", gen, 0.0, 1.0)) * enc(x)).sum(1)
    assert float(copies.median()) > enc.threshold
