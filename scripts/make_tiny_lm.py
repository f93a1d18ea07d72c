"""Build a tiny causal LM directory offline, for tests and demos of generation serving.

    python scripts/make_tiny_lm.py OUT_DIR [--seed 0] [--steps 400]

The corpus ships with the repo (``service/models/assets/tiny_lm_corpus.txt``: short English
sentences about numbers, colours and animals, written for this project). Its lines are split in
order: the first 80 % train the tokenizer and the model, the next 10 % are written to
``OUT_DIR/calibration.txt`` (unlabeled calibration text) and the last 10 % to
``OUT_DIR/heldout.txt`` (evaluation text), so calibration never sees the held-out split.

The output loads with ``AutoModelForCausalLM.from_pretrained(OUT_DIR)`` and
``AutoTokenizer.from_pretrained(OUT_DIR)`` without network: a byte-level BPE tokenizer trained
with ``tokenizers`` (it prepends ``<|endoftext|>`` as BOS; the same token ends a sentence), and a
2-layer Llama-style model (hidden 64) trained for ``--steps`` seeded AdamW steps on whole
sentences. ``OUT_DIR/training.json`` records the seed, steps, losses and held-out next-token
accuracy.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import torch

DEFAULT_CORPUS = (
    Path(__file__).resolve().parent.parent / "service" / "models" / "assets" / "tiny_lm_corpus.txt"
)
SPECIAL_TOKENS = ("<|endoftext|>", "<pad>")  # ids 0 and 1
BOS_EOS, PAD = 0, 1


def split_lines(lines: list[str]) -> tuple[list[str], list[str], list[str]]:
    """Train (first 80 %), calibration (next 10 %) and held-out (last 10 %) lines, in order."""
    n = len(lines)
    a, b = int(n * 0.8), int(n * 0.9)
    return lines[:a], lines[a:b], lines[b:]


def train_tokenizer(lines: list[str], vocab_size: int) -> Any:
    """A byte-level BPE tokenizer (GPT-2 style ``Ġ`` word starts) with BOS prepended on encode."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(lines, trainer)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{SPECIAL_TOKENS[0]} $A", special_tokens=[(SPECIAL_TOKENS[0], BOS_EOS)]
    )
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=SPECIAL_TOKENS[0],
        eos_token=SPECIAL_TOKENS[0],
        unk_token=SPECIAL_TOKENS[0],
        pad_token=SPECIAL_TOKENS[1],
        model_max_length=128,
    )


def _batches(
    sequences: list[list[int]], batch_size: int, steps: int, gen: torch.Generator
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Random batches of whole sentences, right-padded; labels are -100 on padding."""
    out = []
    for _ in range(steps):
        idx = torch.randint(len(sequences), (batch_size,), generator=gen).tolist()
        rows = [sequences[i] for i in idx]
        width = max(len(r) for r in rows)
        ids = torch.full((batch_size, width), PAD, dtype=torch.long)
        labels = torch.full((batch_size, width), -100, dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = torch.tensor(r)
            labels[i, : len(r)] = torch.tensor(r)
        out.append((ids, labels))
    return out


@torch.no_grad()
def _next_token_accuracy(model: torch.nn.Module, sequences: list[list[int]]) -> float:
    hits = total = 0
    for r in sequences:
        ids = torch.tensor([r])
        pred = model(input_ids=ids).logits[0, :-1].argmax(-1)
        hits += int((pred == ids[0, 1:]).sum())
        total += len(r) - 1
    return hits / max(1, total)


def build_tiny_lm(
    out_dir: str | Path,
    seed: int = 0,
    steps: int = 400,
    corpus: str | Path = DEFAULT_CORPUS,
    hidden: int = 64,
    layers: int = 2,
    vocab_size: int = 1000,
    batch_size: int = 32,
    lr: float = 1e-2,
) -> Path:
    """Train and save the tiny LM into ``out_dir``; return the directory."""
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    text = Path(corpus).read_text(encoding="utf-8")
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    train, calibration, heldout = split_lines(lines)
    torch.manual_seed(seed)
    tokenizer = train_tokenizer(train, vocab_size)
    sequences = [[*tokenizer(line)["input_ids"], BOS_EOS] for line in train]
    held_sequences = [[*tokenizer(line)["input_ids"], BOS_EOS] for line in heldout]

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=128,
        bos_token_id=BOS_EOS,
        eos_token_id=BOS_EOS,
        pad_token_id=PAD,
        tie_word_embeddings=True,
    )
    model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(
        bos_token_id=BOS_EOS, eos_token_id=BOS_EOS, pad_token_id=PAD
    )
    gen = torch.Generator().manual_seed(seed)
    optimiser = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    warmup = max(1, steps // 20)

    def schedule(step: int) -> float:  # linear warm-up, cosine decay to 10 %
        if step < warmup:
            return (step + 1) / warmup
        return 0.1 + 0.45 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimiser, schedule)
    model.train()
    started = time.perf_counter()
    losses = []
    threads = torch.get_num_threads()
    # One thread: a model this small gains nothing from more, and loses a lot on a busy machine.
    torch.set_num_threads(1)
    try:
        for ids, labels in _batches(sequences, batch_size, steps, gen):
            loss = model(input_ids=ids, attention_mask=(ids != PAD).long(), labels=labels).loss
            optimiser.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimiser.step()
            scheduler.step()
            losses.append(loss.item())
        model.eval()
        heldout_accuracy = _next_token_accuracy(model, held_sequences)
    finally:
        torch.set_num_threads(threads)
    seconds = time.perf_counter() - started

    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    (out / "calibration.txt").write_text("\n".join(calibration) + "\n", encoding="utf-8")
    (out / "heldout.txt").write_text("\n".join(heldout) + "\n", encoding="utf-8")
    report = {
        "seed": seed,
        "steps": steps,
        "train_seconds": round(seconds, 2),
        "first_loss": round(losses[0], 4) if losses else None,
        "final_loss": round(sum(losses[-20:]) / max(1, len(losses[-20:])), 4) if losses else None,
        "heldout_next_token_accuracy": round(heldout_accuracy, 4),
        "chance_accuracy": round(1 / config.vocab_size, 4),
        "lines": {"train": len(train), "calibration": len(calibration), "heldout": len(heldout)},
    }
    (out / "training.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir", type=Path, help="directory to write the model into")
    parser.add_argument("--seed", type=int, default=0, help="seed of weights and batches")
    parser.add_argument("--steps", type=int, default=400, help="training steps")
    parser.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS, help="text, one per line")
    args = parser.parse_args(argv)
    if args.steps < 0:
        parser.error(f"--steps has to be >= 0, but is {args.steps}")
    out = build_tiny_lm(args.out_dir, seed=args.seed, steps=args.steps, corpus=args.corpus)
    print(json.dumps(json.loads((out / "training.json").read_text()), indent=2))
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
