"""The causal LM adapter: loading and tokens (decoding: tests/generation/test_decode.py).

A tiny Llama-style model is trained once per session from the corpus that ships with the repo
(`scripts/make_tiny_lm.py`, a few seconds on a CPU), so nothing needs the network.
"""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("transformers")

from service.models.causal_lm import CausalLM, read_texts
from service.models.errors import InputError, ModelLoadError

pytestmark = [pytest.mark.unit, pytest.mark.usefixtures("one_torch_thread")]


@pytest.fixture(scope="session")
def lm(tiny_lm_dir: Path) -> CausalLM:
    return CausalLM.load(tiny_lm_dir)


# Loading -----------------------------------------------------------------------------------------


def test_load_describes_the_model(lm: CausalLM, tiny_lm_dir: Path) -> None:
    assert lm.task == "generation"
    assert lm.name == tiny_lm_dir.name
    assert lm.vocab_size == len(lm.tokenizer)
    assert lm.max_context == 128
    assert lm.eos_token_ids == frozenset({0})
    assert len(lm.fingerprint()) == 64
    assert lm.fingerprint() == CausalLM.load(tiny_lm_dir).fingerprint()


def test_missing_model_directory_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-model"
    with pytest.raises(ModelLoadError, match="no-such-model") as info:
        CausalLM.load(missing)
    assert "does not exist" in str(info.value)
    empty = tmp_path / "empty-dir"
    empty.mkdir()
    with pytest.raises(ModelLoadError, match=r"empty-dir.*config\.json"):
        CausalLM.load(empty)


def test_broken_model_directory_is_named(tmp_path: Path) -> None:
    broken = tmp_path / "broken-model"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    with pytest.raises(ModelLoadError, match="broken-model"):
        CausalLM.load(broken)


# Tokens ------------------------------------------------------------------------------------------


def test_token_id_accepts_ids_and_single_token_strings(lm: CausalLM) -> None:
    moo = lm.tokenizer.convert_tokens_to_ids("Ġmoo")
    assert lm.token_id("moo") == moo
    assert lm.token_id(" moo") == moo
    assert lm.token_id("Ġmoo") == moo
    assert lm.token_id(moo) == moo
    assert lm.decode(lm.encode("the cow says moo.")) == "the cow says moo."


@pytest.mark.parametrize("token", ["zebra-unicorn", "the cow", ""])
def test_unknown_focus_token_is_named(lm: CausalLM, token: str) -> None:
    with pytest.raises(ValueError, match="token") as info:
        lm.token_id(token)
    assert isinstance(info.value, InputError)
    assert f'"{token}"' in str(info.value) or token == ""  # as JSON writes it


def test_out_of_range_token_id_is_named(lm: CausalLM) -> None:
    with pytest.raises(ValueError, match=str(lm.vocab_size + 7)):
        lm.token_id(lm.vocab_size + 7)


def test_read_texts_names_a_missing_or_empty_file(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match=r"nothing\.txt.*not found"):
        read_texts(tmp_path / "nothing.txt")
    (tmp_path / "blank.txt").write_text("\n  \n")
    with pytest.raises(ModelLoadError, match="no text"):
        read_texts(tmp_path / "blank.txt")
    (tmp_path / "two.txt").write_text(" one \n\ntwo\n")
    assert read_texts(tmp_path / "two.txt") == ["one", "two"]


def test_load_model_takes_a_directory_or_a_generation_spec(tiny_lm_dir: Path) -> None:
    from service.models import ModelSpec, load_model

    lm = load_model(tiny_lm_dir)
    assert isinstance(lm, CausalLM) and lm.calibration_file == tiny_lm_dir / "calibration.txt"
    spec = ModelSpec.from_dict(
        {
            "task": "generation",
            "path": str(tiny_lm_dir),
            "name": "tiny",
            "options": {"calibration_text": "heldout.txt", "calibration_tokens": 64},
        }
    )
    lm = load_model(spec)
    assert isinstance(lm, CausalLM) and lm.name == "tiny"
    assert lm.calibration_file == tiny_lm_dir / "heldout.txt" and lm.calibration_tokens == 64
    bad = ModelSpec.from_dict(
        {"task": "generation", "path": str(tiny_lm_dir), "options": {"calibration_txt": "x"}}
    )
    with pytest.raises(ModelLoadError, match=r"model\.options\.calibration_txt"):
        load_model(bad)
