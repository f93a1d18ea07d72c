"""Traced graphs: the shipped networks' only where they give the eager results exactly; a fused
(oneDNN) graph only where it is close to eager and faster."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from service.models import graphs, load_model
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


def _convnet() -> nn.Module:
    torch.manual_seed(0)
    norm = nn.BatchNorm2d(8)
    assert norm.running_mean is not None and norm.running_var is not None
    norm.running_mean.uniform_(-1, 1)  # a batch norm that folding actually changes
    norm.running_var.uniform_(0.5, 2)
    layers = [nn.Conv2d(3, 8, 3), norm, nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    return nn.Sequential(*layers, nn.Linear(8, 5)).eval()


def _runs_fused(graph: object) -> bool:
    return "mkldnn_convolution" in str(getattr(graph, "graph", ""))


def test_a_fused_graph_is_used_where_it_is_close_to_eager_and_faster(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    net = _convnet()
    monkeypatch.setattr(graphs, "FUSED_GAIN", 1e9)  # timing aside: "faster" is the machine's call
    graph = traced(net, "forward", (3, 16, 16), torch.device("cpu"), optimize=True)
    assert graph is not None and _runs_fused(graph)
    x = torch.rand(5, 3, 16, 16)
    with torch.inference_mode():
        eager, fused = net(x), graph(x)
    assert not torch.equal(eager, fused)  # folded batch norm: not bit-for-bit ...
    assert torch.allclose(eager, fused, atol=1e-5)  # ... but within the tolerance
    assert torch.equal(eager.argmax(1), fused.argmax(1))


def test_a_fused_graph_is_not_used_when_slower_or_not_close(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    net = _convnet()
    cpu = torch.device("cpu")
    assert not _runs_fused(traced(net, "forward", (3, 16, 16), cpu))  # exact unless asked
    monkeypatch.setattr(graphs, "FUSED_GAIN", 0.0)  # never fast enough
    slower = traced(net, "forward", (3, 16, 16), cpu, optimize=True)
    assert slower is not None and not _runs_fused(slower)
    monkeypatch.setattr(graphs, "FUSED_GAIN", 1e9)
    real = torch.jit.optimize_for_inference

    def off_by_a_little(module: torch.jit.ScriptModule) -> object:
        fused = real(module)
        return lambda x: fused(x) + 1e-3  # beyond the tolerance of logits near 1

    monkeypatch.setattr(torch.jit, "optimize_for_inference", off_by_a_little)
    far = traced(net, "forward", (3, 16, 16), cpu, optimize=True)
    assert far is not None and not _runs_fused(far)
    with torch.inference_mode():
        x = torch.rand(2, 3, 16, 16)
        assert torch.equal(far(x), net(x))  # the exact graph, bit-for-bit
