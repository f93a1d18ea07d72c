"""The adapter between a vision network and the service: inputs in, forward, logits out.

``VisionModel`` wraps any nn.Module-like callable (eager, TorchScript, torch.export) that maps
N×C×H×W float inputs to logits (N×K for classification, N×K×H×W for segmentation). Clients send
raw values (e.g. 0..16 for the digits); ``prepare`` checks them (``vision_inputs.py``), divides
by ``InputSpec.scale`` and applies mean/std, so the network always sees the same preprocessing;
``decode_image`` does the same for PNG/JPEG bytes (``images.py``).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any, cast

import numpy as np
import torch
import torch.nn.functional as F

from .device import resolve_device
from .graphs import traced
from .images import decode_image, decode_image_sized, image_side_limit
from .preprocess import ImagePreprocessor
from .spec import InputSpec, Task
from .vision_inputs import checked_item

VISION_TASKS: tuple[str, ...] = ("classification", "segmentation")


class VisionModel:
    """A classifier or segmenter with its labels and input spec, ready for batched inference.

    ``module`` maps a float32 batch N×C×H×W on ``device`` to logits; ``fixed_batch`` is set for
    modules compiled for one batch size (a static torch.export graph): ``forward`` then runs the
    batch in chunks of that size. ``source`` (a file) is hashed by ``fingerprint`` when the
    module has no state dict. ``graphs`` runs the module's ``forward`` and
    ``forward_with_embedding`` as traced graphs (``graphs.py``), made at their first call on
    each device; only for networks whose control flow depends on shapes alone (the shipped
    ones), and the weights must not change after that first call. ``fused`` lets a graph run
    oneDNN-fused on the CPU where that is close to eager and faster (``graphs.py``).
    ``preprocessor`` (a Hugging Face model's image processor) replaces the squashing resize of
    images; ``native_output`` keeps a segmenter's logits at the network's own resolution (the
    engine resizes each row to its image, as ``transformers``' post-processing does).
    """

    def __init__(
        self,
        module: Any,
        *,
        name: str,
        task: Task,
        labels: Sequence[str],
        input_spec: InputSpec,
        device: str | torch.device = "cpu",
        fixed_batch: int | None = None,
        source: str | None = None,
        graphs: bool = False,
        fused: bool = False,
        preprocessor: ImagePreprocessor | None = None,
        native_output: bool = False,
    ) -> None:
        if task not in VISION_TASKS:
            raise ValueError(f"task: {task!r} is not one of {', '.join(VISION_TASKS)}")
        if not labels:
            raise ValueError("labels: a vision model needs at least one label")
        self.module = module
        self.name = name
        self.task: Task = task
        self.labels: list[str] = [str(label) for label in labels]
        self.input_spec = input_spec
        self.fixed_batch = fixed_batch
        self.source = source
        self.graphs = graphs
        self.fused = fused
        self.preprocessor = preprocessor
        self.native_output = native_output
        self._graphs: dict[str, Callable[[torch.Tensor], Any] | None] = {}
        self.device = torch.device("cpu")
        self._fingerprint: str | None = None
        self.to(device)

    def __repr__(self) -> str:
        return (
            f"VisionModel(name={self.name!r}, task={self.task!r}, classes={self.num_classes}, "
            f"input={self.input_spec.shape}, device={self.device})"
        )

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    # -- inputs ---------------------------------------------------------------------------------

    def prepare(self, item: Any) -> torch.Tensor:
        """Check one raw item (nested lists or an array) and return the network's input.

        Accepts the spec's C×H×W shape, or H×W for one channel. Raises ``InputError`` naming the
        first bad element (field relative to the item, e.g. "[3][1]") or the shape.
        """
        return torch.from_numpy(self.prepare_array(item))

    def prepare_array(self, item: Any) -> np.ndarray:
        """`prepare` as a float32 array (no torch call: see `InputSpec.normalize_array`)."""
        raw = checked_item(item, self.input_spec)
        return self.input_spec.normalize_array(raw.reshape(self.input_spec.shape))

    def decode_image(self, data: bytes) -> torch.Tensor:
        """PNG/JPEG bytes → the network's input (grayscale or RGB, resized to H×W).

        Pixels 0..255 map linearly to [low, high]; then the same normalisation as ``prepare``.
        Images above 4096×4096 pixels are refused from their header, before decoding, and
        images with a side above ``max_image_side()`` before converting.
        """
        if self.preprocessor is None:
            return decode_image(data, self.input_spec, self.max_image_side())
        return torch.from_numpy(self.decode_image_sized(data)[0])

    def decode_image_sized(self, data: bytes) -> tuple[np.ndarray, tuple[int, int]]:
        """``decode_image`` as a float32 array, and the image's own H×W."""
        spec, side = self.input_spec, self.max_image_side()
        return decode_image_sized(data, spec, side, self.preprocessor)

    def max_image_side(self) -> int:
        """The largest image side decoded for this model: 8× its input side (at least 512);
        see ``images.image_side_limit``."""
        return image_side_limit(self.input_spec)

    # -- inference ------------------------------------------------------------------------------

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        """N×C×H×W prepared inputs (any device) → float32 logits on ``self.device``.

        Classification gives N×K, segmentation N×K×H×W (resized to the input's H×W when the
        network answers at a lower resolution).
        """
        if batch.dim() != 4 or tuple(batch.shape[1:]) != self.input_spec.shape:
            layout = "×".join(map(str, self.input_spec.shape))
            raise ValueError(f"batch: shape {tuple(batch.shape)} is not N×{layout}")
        with torch.inference_mode():
            x = batch.to(self.device, torch.float32)
            n = x.shape[0]
            if self.fixed_batch is None or n == self.fixed_batch:
                out = self._call(x)
            else:
                out = torch.cat(
                    [
                        self._call_padded(x[i : i + self.fixed_batch])
                        for i in range(0, n, self.fixed_batch)
                    ]
                )
            return self._checked_output(out, n)

    def forward_with_embedding(
        self, batch: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``forward``, and the network's embedding for the replay memory (N×D) when the network
        has a ``forward_with_embedding`` (the shipped digits CNN); else (logits, None)."""
        embed = getattr(self.module, "forward_with_embedding", None)
        if embed is None or self.fixed_batch is not None:
            return self.forward(batch), None
        with torch.inference_mode():
            x = batch.to(self.device, torch.float32)
            out, embedding = self._graph("forward_with_embedding", embed)(x)
            out = self._checked_output(out, x.shape[0])
            return out, embedding.reshape(x.shape[0], -1).to(out.device, torch.float32)

    def _call_padded(self, chunk: torch.Tensor) -> torch.Tensor:
        size = cast(int, self.fixed_batch)
        missing = size - chunk.shape[0]
        if missing:
            chunk = torch.cat([chunk, chunk[:1].expand(missing, *chunk.shape[1:])])
        return self._call(chunk)[: size - missing]

    def _graph(self, method: str, eager: Callable[[torch.Tensor], Any]) -> Callable[..., Any]:
        """The traced graph of ``module.<method>`` when ``graphs`` is on and it traced right,
        else ``eager``."""
        if not self.graphs:
            return eager
        if method not in self._graphs:
            self._graphs[method] = traced(
                self.module, method, self.input_spec.shape, self.device, optimize=self.fused
            )
        return self._graphs[method] or eager

    def _call(self, x: torch.Tensor) -> torch.Tensor:
        out = self._graph("forward", self.module)(x)
        # Common wrappers: torchvision segmenters return {"out": ...}, some models a tuple.
        if isinstance(out, Mapping):
            out = out.get("out", out.get("logits", next(iter(out.values()), None)))
        elif isinstance(out, (tuple, list)) and out:
            out = out[0]
        if not isinstance(out, torch.Tensor):
            raise RuntimeError(f"model {self.name!r} returned {type(out).__name__}, not a tensor")
        return out

    def _checked_output(self, out: torch.Tensor, n: int) -> torch.Tensor:
        want = 2 if self.task == "classification" else 4
        shape = tuple(out.shape)
        if out.dim() != want or shape[0] != n or shape[1] != self.num_classes:
            layout = "N×K" if want == 2 else "N×K×H×W"
            raise RuntimeError(
                f"model {self.name!r} returned logits of shape {shape}; expected {layout} with "
                f"N={n} and K={self.num_classes} (one per label)"
            )
        if want == 4 and not self.native_output and shape[2:] != self.input_spec.shape[1:]:
            out = F.interpolate(out.float(), size=self.input_spec.shape[1:], mode="bilinear")
        return out.to(self.device, torch.float32)

    def to(self, device: str | torch.device) -> VisionModel:
        """Move the network; "auto" picks CUDA when there is one."""
        target = resolve_device(device)
        moved = self.module.to(target) if hasattr(self.module, "to") else self.module
        self.module = moved if moved is not None else self.module
        self.device = target
        self._graphs.clear()  # traced for the old device; made again at the next call
        return self

    def warmup(self, batch_sizes: Sequence[int] = (1, 8)) -> None:
        """Run a batch of each size once (allocations, kernel selection, output checks)."""
        spec = self.input_spec
        item = spec.normalize(np.full(spec.shape, spec.low, dtype=np.float32))
        for size in batch_sizes:
            self.forward(item.expand(size, *spec.shape))
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def fingerprint(self) -> str:
        """sha256 over the weights (state dict in key order, else the model file), the labels,
        the task and the input spec: a stable key for cached calibrations."""
        if self._fingerprint is None:
            digest = hashlib.sha256()
            state = self.module.state_dict() if hasattr(self.module, "state_dict") else {}
            if state:
                for key, tensor in state.items():
                    t = tensor.detach().to("cpu").contiguous()
                    digest.update(f"{key}|{t.dtype}|{tuple(t.shape)}\n".encode())
                    digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
            elif self.source is not None:
                with open(self.source, "rb") as handle:
                    for block in iter(lambda: handle.read(1 << 20), b""):
                        digest.update(block)
            else:
                raise RuntimeError(f"model {self.name!r} has neither a state dict nor a file")
            meta = {"labels": self.labels, "task": self.task, "input": self.input_spec.to_dict()}
            digest.update(json.dumps(meta, sort_keys=True).encode())
            self._fingerprint = digest.hexdigest()
        return self._fingerprint
