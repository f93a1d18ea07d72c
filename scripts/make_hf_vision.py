"""Hugging Face vision directories with random weights (no hub here): a ViT classifier, a
ResNet classifier and a SegFormer segmenter, each saved with ``save_pretrained`` next to its
image processor, as a model owner's folder would be.

``tiny`` shapes are for tests (a second each); ``real`` ones are the sizes bench/real_model.py
measures: ViT-Ti/16 (hidden 192, 12 layers, 3 heads, 224², 1,000 classes), ViT-B/16 and
ResNet-50 (ResNetConfig's defaults, 1,000 classes, ConvNeXt-style 224 crop).

    python scripts/make_hf_vision.py vit-tiny OUT_DIR
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

KINDS = ("vit", "vit-tiny", "vit-b16", "resnet50", "resnet-tiny", "segformer", "segformer-tiny")


def build(kind: str, out: str | Path, seed: int = 0) -> Path:
    """Save model ``kind`` (one of KINDS) with its image processor under ``out``."""
    import torch
    import transformers as tf

    logging.getLogger("transformers").setLevel(logging.ERROR)  # the torchvision fallback note
    torch.manual_seed(seed)
    labels = 1000
    model: Any
    if kind.startswith("vit"):
        shape = {
            "vit": dict(
                hidden_size=192,
                num_hidden_layers=12,
                num_attention_heads=3,
                intermediate_size=768,
                image_size=224,
                patch_size=16,
            ),
            "vit-b16": dict(image_size=224, patch_size=16),
            # A wider initialisation than the default 0.02: a random ViT with it answers nearly
            # the same logits for every image, unlike a trained one (tests need varied answers).
            "vit-tiny": dict(
                initializer_range=0.2,
                hidden_size=32,
                num_hidden_layers=2,
                num_attention_heads=2,
                intermediate_size=64,
                image_size=32,
                patch_size=8,
            ),
        }[kind]
        labels = 10 if kind == "vit-tiny" else 1000
        model = tf.ViTForImageClassification(tf.ViTConfig(num_labels=labels, **shape))
        side = int(shape["image_size"])
        processor: Any = tf.ViTImageProcessor(size={"height": side, "width": side})
    elif kind.startswith("resnet"):
        if kind == "resnet-tiny":
            config = tf.ResNetConfig(
                embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], num_labels=7
            )
            edge = 48
        else:
            config = tf.ResNetConfig(num_labels=1000)
            edge = 224
        model = tf.ResNetForImageClassification(config)
        processor = tf.ConvNextImageProcessor(
            size={"shortest_edge": edge},
            crop_pct=0.875,
            image_mean=[0.485, 0.456, 0.406],
            image_std=[0.229, 0.224, 0.225],
        )
    elif kind.startswith("segformer"):
        if kind == "segformer-tiny":
            config = tf.SegformerConfig(
                num_labels=6,
                hidden_sizes=[8, 16, 16, 32],
                depths=[1, 1, 1, 1],
                decoder_hidden_size=32,
                num_attention_heads=[1, 1, 2, 2],
            )
            side = 96
        else:  # SegFormer-B0 on ADE20K's 150 classes
            config, side = tf.SegformerConfig(num_labels=150), 512
        model = tf.SegformerForSemanticSegmentation(config)
        processor = tf.SegformerImageProcessor(size={"height": side, "width": side})
    else:
        raise ValueError(f"kind: {kind!r} is not one of {', '.join(KINDS)}")
    path = Path(out)
    model.eval().save_pretrained(path)
    processor.save_pretrained(path)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("kind", choices=KINDS)
    parser.add_argument("out", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(build(args.kind, args.out, args.seed))


if __name__ == "__main__":
    main()
