"""Networks of the shipped models. Both take raw inputs divided by 16, i.e. values in [0, 1]."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

DIGIT_CLASSES = 10
SCENE_CLASSES = 11  # background + the ten digits


class DigitsCNN(nn.Module):
    """8×8 digit classifier: conv 32 → conv 64 → max-pool → fc 128 → fc 10, with dropout."""

    def __init__(self, num_classes: int = DIGIT_CLASSES) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(32, 64, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Dropout(0.25),
            nn.Linear(64 * 4 * 4, 128),
            nn.ReLU(inplace=True),
            nn.Dropout(0.5),
            nn.Linear(128, num_classes),
        )
        # Channels-last convolutions and pooling: on one CPU thread the feature stack of a
        # 32-row batch takes half the time in this layout (1.6 against 3.1 ms, bench note in
        # docs/PERFORMANCE.md); loaded weights are copied into it, the results do not change.
        for layer in self.features:
            if isinstance(layer, nn.Conv2d):
                layer.weight.data = layer.weight.data.contiguous(memory_format=torch.channels_last)

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.features(x.contiguous(memory_format=torch.channels_last))
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.classifier(self._features(x))
        return out

    def forward_with_embedding(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits, and the replay memory's embedding: the 128-d penultimate activations of the
        input translated (sub-pixel) so its intensity centroid sits at the centre.

        An 8×8 digit shifted by one pixel moves its penultimate activations far (median cosine
        0.93 to the original); after centring the cosine median is 0.99, while other
        augmentations and distinct digits keep their similarities (docs/MODULATION.md).
        """
        # One pass over both halves: the network's Python and dispatch overhead is paid once.
        n = x.shape[0]
        *body, last = self.classifier
        hidden = self._features(torch.cat([x, centre_of_mass(x)]))
        for layer in body:
            hidden = layer(hidden)
        out: torch.Tensor = last(hidden[:n])
        return out, hidden[n:]


def centre_of_mass(x: torch.Tensor) -> torch.Tensor:
    """N×C×H×W images translated (bilinear, zero fill) so the intensity centroid is central."""
    n, _, h, w = x.shape
    mass = x.sum(dim=(1, 2, 3)).clamp_min(1e-6)
    ys = torch.arange(h, dtype=x.dtype, device=x.device)
    xs = torch.arange(w, dtype=x.dtype, device=x.device)
    cy = (x.sum(dim=(1, 3)) * ys).sum(dim=1) / mass
    cx = (x.sum(dim=(1, 2)) * xs).sum(dim=1) / mass
    theta = torch.zeros(n, 2, 3, dtype=x.dtype, device=x.device)
    theta[:, 0, 0] = 1.0
    theta[:, 1, 1] = 1.0
    # affine_grid works in [-1, 1] coordinates: one pixel is 2 / size.
    theta[:, 0, 2] = (cx - (w - 1) / 2) * 2 / w
    theta[:, 1, 2] = (cy - (h - 1) / 2) * 2 / h
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, align_corners=False, padding_mode="zeros")


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class SceneSegmenter(nn.Module):
    """Fully convolutional segmenter: N×1×H×W in [0, 1] → N×11×H×W logits (about 140k params).

    The input is folded 4×4 pixels per cell (pixel-unshuffle), so the 3×3 convolutions run at 1/4
    resolution with 64 channels: on CPU that is several times faster than full-resolution convs
    with few channels. Four of them see 9×9 cells, 36 pixels, enough for a whole 16×16
    (double-size) digit. A pixel-shuffle unfolds per-pixel features again, and 1×1 convs combine
    them with the raw pixel, so stroke edges (a threshold on the pixel) stay exact.
    Any H×W works: the input is zero-padded to multiples of 4 and the output cropped back.
    """

    FOLD = 4

    def __init__(self, num_classes: int = SCENE_CLASSES, width: int = 64, hidden: int = 16) -> None:
        super().__init__()
        cells = self.FOLD * self.FOLD
        self.body = nn.Sequential(
            _block(cells, width), _block(width, width), _block(width, width), _block(width, width)
        )
        self.unfold = nn.Conv2d(width, hidden * cells, 1)
        self.head = nn.Sequential(
            nn.Conv2d(hidden + 1, 32, 1), nn.ReLU(inplace=True), nn.Conv2d(32, num_classes, 1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2], x.shape[-1]
        pad_h, pad_w = (-height) % self.FOLD, (-width) % self.FOLD
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h))
        cells = self.body(F.pixel_unshuffle(x, self.FOLD))
        pixels = F.relu(F.pixel_shuffle(self.unfold(cells), self.FOLD))
        out: torch.Tensor = self.head(torch.cat([pixels, x], dim=1))
        return out[..., :height, :width]
