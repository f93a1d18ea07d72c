"""Traced graphs of the shipped networks: used only where they give the eager results exactly."""

from __future__ import annotations

import torch
from torch import nn

from service.models import load_model
from service.models.graphs import traced


def test_shipped_digits_run_as_graphs_with_the_eager_results() -> None:
    model = load_model("digits")
    x = torch.rand(7, 1, 8, 8)
    logits, embedding = model.forward_with_embedding(x)
    plain = model.forward(x)
    assert model._graphs["forward"] is not None
    assert model._graphs["forward_with_embedding"] is not None
    with torch.inference_mode():
        eager_logits, eager_embedding = model.module.forward_with_embedding(x)
        assert torch.equal(plain, model.module(x))
    assert torch.equal(logits, eager_logits)
    assert torch.equal(embedding, eager_embedding.reshape(7, -1))


def test_shipped_segmenter_runs_as_a_graph_with_the_eager_masks() -> None:
    model = load_model("digit-scenes")
    x = torch.rand(2, *model.input_spec.shape)
    out = model.forward(x)
    assert model._graphs["forward"] is not None
    with torch.inference_mode():
        assert torch.equal(out, model.module(x))


class _ShapeBranch(nn.Module):
    """Control flow on the batch size: a trace at one size is wrong at another."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 2 if x.shape[0] > 2 else x * 3


class _Broken(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("cannot run")


def test_a_trace_that_does_not_reproduce_eager_is_not_used() -> None:
    assert traced(_ShapeBranch().eval(), "forward", (1, 4, 4), torch.device("cpu")) is None


def test_a_module_that_cannot_be_traced_or_is_training_is_not_traced() -> None:
    assert traced(_Broken().eval(), "forward", (1, 4, 4), torch.device("cpu")) is None
    assert traced(nn.Identity().train(), "forward", (1, 4, 4), torch.device("cpu")) is None
    assert traced(nn.Identity().eval(), "forward", (1, 4, 4), torch.device("cpu")) is not None


def test_moving_the_model_traces_again() -> None:
    model = load_model("digits")
    model.forward(torch.rand(2, 1, 8, 8))
    assert "forward" in model._graphs
    model.to("cpu")
    assert model._graphs == {}
    assert model.forward(torch.rand(2, 1, 8, 8)).shape == (2, 10)
