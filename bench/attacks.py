"""Attacks on the tiers, through the real serving path (the app in a FastAPI TestClient).

`digits` with bronze at `utility: 0.65` (and `digit-scenes` with bronze at 0.65 pixel agreement):

* many keys: 21 bronze keys each ask the 200 held-out images once; majority vote across keys;
* exact replay: one key asks 32 times; vote;
* augmentations: 32 label-preserving copies per image, per family alone and mixed, and two
  transforms the digest was not trained on (bench/augment.py), with the original asked first or
  never (a fresh memory each), one request per copy; vote. On one server (its own memory) and,
  with ``--replicas N``, on N app instances each with its own engine, sharing one real
  ``redis-server`` (started here, on a free port) as the replay memory, the copies spread over
  them round-robin;
* irrelevant fields: top_k, a 1e-6 focus entry, PNG instead of numbers, one image per request
  instead of 200, the tier header, OIP v2 instead of /predict: share of labels that change;
* honest utility: all 1,797 digits, a bronze key and a gold key lowered to bronze, agreement with
  gold; per class against the ordering integral's prediction at the same overall agreement
  (bound max(12 pp, 4.5 binomial SD));
* digit-scenes: many keys, and a 1-pixel shift of the canvas (mask shifted back), on pixels.

A gain is vote accuracy minus the mean accuracy of the answers voted on (what one such query
gets); "vs orig" is against the original image's answer. Ends with one line of vote gains.

    python bench/attacks.py [--secret S] [--images 200] [--copies 32] [--families all|mixed]
        [--replicas 4] [--skip digits,fields,honest,scenes]
"""

from __future__ import annotations

import argparse
import base64
import io
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from augment import FAMILIES, UNSEEN, augment, worst_class
from fastapi.testclient import TestClient
from PIL import Image

from service.access.keys import KeyRecord, KeyStore, generate_key, hash_key
from service.api.app import create_app
from service.config import ServiceConfig
from service.models import heldout, load_model
from service.models.data import digits_splits
from service.settings import Settings

KEYS = {f"bronze-{i}": generate_key() for i in range(21)} | {"gold": generate_key()}
CACHE = Path(tempfile.mkdtemp(prefix="aim-attacks-"))


@contextmanager
def redis_server() -> Iterator[str]:
    """A throwaway real ``redis-server`` on a free port, no persistence; yields its URL."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("--replicas needs redis-server on PATH (apt-get install redis-server)")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
    )
    try:
        import redis

        client = redis.Redis(port=port)
        for _ in range(100):
            try:
                client.ping()
                break
            except redis.ConnectionError:
                time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(10)


@contextmanager
def replicas(model: str, secret: bytes, n: int, redis_url: str | None) -> Iterator[list[Any]]:
    """``n`` fresh apps; with ``redis_url`` they share its replay memory (flushed first)."""
    if redis_url is not None:
        import redis

        redis.Redis.from_url(redis_url).flushdb()
    with ExitStack() as stack:
        yield [stack.enter_context(server(model, secret, redis_url)) for _ in range(n)]


@contextmanager
def server(model: str, secret: bytes, redis_url: str | None = None) -> Iterator[TestClient]:
    """A fresh app (empty replay memory) for ``model``; calibration is cached across apps."""
    config = {"model": model, "tiers": {"gold": {"utility": 1.0}, "bronze": {"utility": 0.65}}}
    store = KeyStore(
        [KeyRecord(k, "gold" if k == "gold" else "bronze", hash_key(v)) for k, v in KEYS.items()]
    )
    settings = Settings(
        cache_dir=CACHE,
        device="cpu",
        max_items=2048,
        max_batch_size=256,
        redis_url=redis_url,
    )
    app = create_app(settings, ServiceConfig.from_dict(config), store, secret=secret)
    with TestClient(app, raise_server_exceptions=False) as client:
        while client.get("/readyz").status_code != 200:
            if client.get("/readyz").json().get("status") == "failed":
                raise RuntimeError("model failed to load")
        yield client


def ask(client: TestClient, key: str, inputs: Any, chunk: int = 200, **extra: Any) -> np.ndarray:
    """Labels (or masks) for ``inputs``, ``chunk`` per request."""
    headers = {"X-API-Key": KEYS[key], **extra.pop("headers", {})}
    out = []
    for start in range(0, len(inputs), chunk):
        body = {"inputs": inputs[start : start + chunk], **extra}
        r = client.post("/predict", json=body, headers=headers)
        r.raise_for_status()
        preds = r.json()["predictions"]
        out += [p["index"] if "index" in p else p["mask"] for p in preds]
    return np.asarray(out)


def vote(answers: list[np.ndarray]) -> np.ndarray:
    stack = torch.as_tensor(np.stack(answers))
    return stack.mode(dim=0).values.numpy()


def gain(answers: list[np.ndarray], truth: np.ndarray) -> tuple[float, float, float]:
    """(single accuracy, vote accuracy, gain in pp) of the answers against ``truth``."""
    single = float(np.mean([np.mean(a == truth) for a in answers]))
    voted = float(np.mean(vote(answers) == truth))
    return single, voted, 100 * (voted - single)


def row(
    table: list[str], name: str, single: float, voted: float, pp: float, extra: str = ""
) -> None:
    table.append(f"| {name} | {single:.3f} | {voted:.3f} | {pp:+.1f} pp | {extra} |")
    print(table[-1], flush=True)


def digits_attacks(args: argparse.Namespace, table: list[str], gains: dict[str, float]) -> None:
    x, y = heldout("digits")
    raw = (x[: args.images, 0] * 16).numpy()
    truth = y[: args.images].numpy()
    lists = raw.tolist()
    with server("digits", args.secret) as client:
        keys = [ask(client, f"bronze-{i}", lists) for i in range(21)]
        s, v, g = gain(keys, truth)
        row(table, "digits: 21 bronze keys", s, v, g, f"keys agree {np.mean(keys == keys[0]):.3f}")
        gains["keys"] = g
        replay = [ask(client, "bronze-0", lists) for _ in range(args.copies)]
        s, v, g = gain(replay, truth)
        row(table, "digits: exact replay ×32", s, v, g)
        gains["replay"] = g
    families = (
        (*FAMILIES, "mixed", *UNSEEN) if args.families == "all" else tuple(args.families.split(","))
    )
    setups: list[tuple[int, str | None]] = [(1, None)]
    with ExitStack() as stack:
        if args.replicas > 1:
            setups.append((args.replicas, stack.enter_context(redis_server())))
        for family in families:
            table.append(f"| **{family}** | | | | |")
            print(table[-1], flush=True)
            for n, url in setups:
                for first in [w == "first" for w in args.first.split(",")]:
                    where = "1 replica" if n == 1 else f"{n} replicas, Redis"
                    name = f"{family}, {where}, original {'first' if first else 'never'}"
                    g = family_vote(args, raw, truth, family, n, url, first, table, name)
                    gains[f"{family}/{n}{'' if first else '/alone'}"] = g


def family_vote(
    args: argparse.Namespace,
    raw: np.ndarray,
    truth: np.ndarray,
    family: str,
    n: int,
    url: str | None,
    first: bool,
    table: list[str],
    name: str,
) -> float:
    """One row: ``args.copies`` copies of ``family`` spread round-robin over ``n`` fresh apps."""
    gen = torch.Generator().manual_seed(
        (*FAMILIES, *UNSEEN).index(family) if family != "mixed" else 99
    )
    with replicas("digits", args.secret, n, url) as clients:
        orig = ask(clients[-1], "bronze-0", raw.tolist()) if first else None
        copies = [
            ask(clients[j % n], "bronze-0", augment(torch.as_tensor(raw), family, gen).tolist())
            for j in range(args.copies)
        ]
    s, v, g = gain(copies, truth)
    note = f"vs orig {100 * (v - np.mean(orig == truth)):+.1f} pp" if orig is not None else ""
    row(table, name, s, v, g, note)
    return g


def png(image: np.ndarray) -> dict[str, str]:
    buf = io.BytesIO()
    Image.fromarray(np.round(image * 255 / 16).astype(np.uint8), mode="L").save(buf, "PNG")
    return {"image_b64": base64.b64encode(buf.getvalue()).decode()}


def irrelevant_fields(args: argparse.Namespace, table: list[str]) -> None:
    x, _ = heldout("digits")
    raw = (x[: args.images, 0] * 16).numpy()
    lists = raw.tolist()
    with server("digits", args.secret) as client:
        base = ask(client, "bronze-0", lists)
        variants = {
            "top_k 3": ask(client, "bronze-1", lists, top_k=3),
            "focus 1e-6": ask(
                client,
                "bronze-2",
                lists,
                focus=[{"class": "3", "direction": "up", "strength": 1e-6}],
            ),
            "PNG": ask(client, "bronze-3", [png(im) for im in raw]),
            "one per request": ask(client, "bronze-4", lists, chunk=1),
            "tier header": ask(client, "bronze-5", lists, headers={"X-AIM-Tier": "bronze"}),
            "gold lowered": ask(client, "gold", lists, headers={"X-AIM-Tier": "bronze"}),
        }
        body = {
            "inputs": [
                {
                    "name": "input",
                    "shape": [len(raw), 8, 8],
                    "datatype": "FP32",
                    "data": raw.reshape(-1).tolist(),
                }
            ]
        }
        r = client.post(
            "/v2/models/digits/infer", json=body, headers={"X-API-Key": KEYS["bronze-6"]}
        )
        r.raise_for_status()
        variants["OIP v2"] = np.asarray(
            next(o for o in r.json()["outputs"] if o["name"] == "index")["data"]
        )
    for name, labels in variants.items():
        changed = float(np.mean(labels != base))
        table.append(f"| digits: {name} | labels changed {changed:.3f} | | | |")
        print(table[-1], flush=True)


def honest_utility(args: argparse.Namespace, table: list[str]) -> None:
    splits = digits_splits()
    every = np.concatenate([s[0] for s in (splits.train, splits.calibration, splits.heldout)])
    order = np.random.default_rng(7).permutation(len(every))
    lists = every[order].tolist()
    model = load_model("digits")
    with torch.inference_mode():
        z = model.forward(torch.as_tensor(every[order] / 16.0, dtype=torch.float32)[:, None])
    top = z.argmax(1).numpy()
    secrets = [s.encode() for s in args.honest_secrets.split(",") if s] or [args.secret]
    for secret in secrets:
        for who, headers in (("bronze-0", {}), ("gold", {"X-AIM-Tier": "bronze"})):
            with server("digits", secret) as client:
                labels = ask(client, who, lists, chunk=8, headers=headers)
            overall, worst = worst_class(z, torch.as_tensor(labels == top))
            name = "bronze key" if who != "gold" else "gold key lowered"
            table.append(
                f"| digits, 1,797, secret {secret.decode()}: {name} | agreement {overall:.4f} "
                f"({100 * (overall - 0.65):+.2f} pp) | | | worst class {worst:.2f} of its bound |"
            )
            print(table[-1], flush=True)


def scenes_attacks(args: argparse.Namespace, table: list[str], gains: dict[str, float]) -> None:
    x, _ = heldout("digit-scenes")
    n = min(args.scenes, x.shape[0])
    raw = (x[:n, 0] * 16).numpy()
    model = load_model("digit-scenes")
    with torch.inference_mode():
        clean = model.forward(x[:n]).argmax(1).numpy()
    with server("digit-scenes", args.secret) as client:
        keys = [ask(client, f"bronze-{i}", raw.tolist(), chunk=16) for i in range(args.scene_keys)]
        s, v, g = gain(keys, clean)
        row(table, f"scenes: {args.scene_keys} bronze keys (pixel agreement)", s, v, g)
        gains["scenes keys"] = g
        shifted = []
        for dy, dx in (
            (0, 0),
            (0, 1),
            (1, 0),
            (0, -1),
            (-1, 0),
            (1, 1),
            (-1, -1),
            (1, -1),
            (-1, 1),
        ):
            canvas = np.roll(raw, (dy, dx), axis=(1, 2))
            m = ask(client, "bronze-0", canvas.tolist(), chunk=16)
            shifted.append(np.roll(m, (-dy, -dx), axis=(1, 2)))
        inner = (slice(None), slice(1, -1), slice(1, -1))  # pixels that wrapped are left out
        s, v, g = gain([a[inner] for a in shifted], clean[inner])
        same = float(np.mean([np.mean(a[inner] == shifted[0][inner]) for a in shifted[1:]]))
        row(table, "scenes: 1-px shifts ×9", s, v, g, f"mask same as unshifted {same:.3f}")
        gains["scenes shift"] = g


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--secret", default="bench-attacks")
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--copies", type=int, default=32)
    parser.add_argument("--families", default="all", help="all, or a comma list of families")
    parser.add_argument("--replicas", type=int, default=4, help="1: one server only")
    parser.add_argument(
        "--first",
        default="first,never",
        help="ask the original first, never, or both (first,never)",
    )
    parser.add_argument(
        "--honest-secrets", default="", help="comma list of secrets for honest utility"
    )
    parser.add_argument("--scenes", type=int, default=32)
    parser.add_argument("--scene-keys", type=int, default=21)
    parser.add_argument("--skip", default="", help="comma list of: digits,fields,honest,scenes")
    args = parser.parse_args()
    args.secret = args.secret.encode()
    skip = set(args.skip.split(","))
    table = ["| attack | one query | vote | gain | note |", "| --- | --- | --- | --- | --- |"]
    gains: dict[str, float] = {}
    print("\n".join(table), flush=True)
    if "digits" not in skip:
        digits_attacks(args, table, gains)
    if "fields" not in skip:
        irrelevant_fields(args, table)
    if "honest" not in skip:
        honest_utility(args, table)
    if "scenes" not in skip:
        scenes_attacks(args, table, gains)
    print("vote gains: " + ", ".join(f"{k} {v:+.1f} pp" for k, v in gains.items()))
    alone = {k: v for k, v in gains.items() if "/" in k}
    if alone:
        worst = max(alone, key=lambda k: alone[k])
        print(f"worst family vote gain: {worst} {alone[worst]:+.1f} pp")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
