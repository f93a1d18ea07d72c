"""What image decoding costs the server per request, with and without the bound on the decoded
size (`VisionModel.max_image_side`: 8× the model's input side, at least 512).

Builds `--count` PNGs of `--side`² pixels (flat grey: they compress to almost nothing, so many
fit in one allowed body, as an attacker would send them) and times decoding them all with the
shipped digits model (8×8 input): bounded, each is refused from its header; unbounded (the bound
lifted to 4096, the absolute limit), each is decoded and resized.

    python bench/image_decode.py [--count 64] [--side 4096]
"""

from __future__ import annotations

import argparse
import io
import time

from PIL import Image

from service.models import load_model
from service.models.errors import InputError


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--count", type=int, default=64)
    parser.add_argument("--side", type=int, default=4096)
    args = parser.parse_args()
    buf = io.BytesIO()
    Image.new("L", (args.side, args.side), 128).save(buf, format="PNG")
    png = buf.getvalue()
    model = load_model("digits")
    print(f"{args.count} PNGs of {args.side}², {len(png) * args.count / 1e6:.2f} MB in all")
    for name, limit in (("bounded", None), ("unbounded", 4096)):
        if limit is not None:
            model.max_image_side = lambda limit=limit: limit  # type: ignore[method-assign]
        refused = 0
        t0 = time.perf_counter()
        for _ in range(args.count):
            try:
                model.decode_image(png)
            except InputError:
                refused += 1
        ms = (time.perf_counter() - t0) * 1000
        print(f"{name:>9}: {ms:9.1f} ms for the request ({refused} refused)")


if __name__ == "__main__":
    main()
