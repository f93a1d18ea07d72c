#!/usr/bin/env bash
# Download, on the host, wheels of every dependency of the service image, resolved for the
# IMAGE's interpreter rather than the host's, so that `docker build` installs offline from them:
#
#   scripts/build-wheelhouse.sh IMAGE [DIR]     # default DIR: ./wheelhouse
#
# Why not a plain `pip download` on the host: pip evaluates environment markers against the
# interpreter that runs it. Debian bookworm's Python is 3.11.2 and `redis` needs `async-timeout`
# only below 3.11.3 (`python_full_version < "3.11.3"`): a host on 3.11.7 skips it and the image's
# offline install then fails. So:
#   1. the image says its Python version and the platform tags its glibc accepts;
#   2. the host downloads binary wheels for exactly that (--python-version/--platform/--abi);
#   3. the image resolves the requirements offline against the wheelhouse (pip --dry-run, its
#      own markers); whatever it finds missing is downloaded for it too, until nothing is.
#
# Environment: PYTHON (host interpreter with pip; default .venv/bin/python or python3),
# TORCH_SPEC (default torch==2.13.0: the host's pip configuration decides CPU or CUDA build).
set -euo pipefail

IMAGE="${1:?usage: build-wheelhouse.sh IMAGE [DIR]}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DIR="$(mkdir -p "${2:-$ROOT/wheelhouse}" && cd "${2:-$ROOT/wheelhouse}" && pwd)"
TORCH_SPEC="${TORCH_SPEC:-torch==2.13.0}"
PYTHON="${PYTHON:-}"
if [[ -z "$PYTHON" ]]; then
  if [[ -x "$ROOT/.venv/bin/python" ]]; then PYTHON="$ROOT/.venv/bin/python"; else PYTHON=python3; fi
fi

log() { printf '[build-wheelhouse] %s\n' "$*" >&2; }

# 1. The image's interpreter: "3.11.2 cp311 tag tag ...", tags from the C library it runs on.
read -r -a target <<<"$(docker run --rm --network none "$IMAGE" python3 -c '
import os, platform, sys
v = sys.version_info
arch = platform.machine()
libc = os.confstr("CS_GNU_LIBC_VERSION").split()[1]  # "glibc 2.36"
major, minor = (int(x) for x in libc.split(".")[:2])
tags = [f"manylinux_{major}_{m}_{arch}" for m in range(minor, 4, -1)]
tags += [f"manylinux{t}_{arch}" for t in ("2014", "2010", "1")] + [f"linux_{arch}"]
print(f"{v.major}.{v.minor}.{v.micro}", f"cp{v.major}{v.minor}", *tags)
')"
full_version="${target[0]}" abi="${target[1]}"
platforms=()
for tag in "${target[@]:2}"; do platforms+=(--platform "$tag"); done
log "image $IMAGE: Python $full_version ($abi), ${#platforms[@]} platform tags down to ${target[-1]}"

# The image installs the project's dependencies and builds its wheel (build-system.requires).
REQS="$(mktemp /tmp/aim-wheelhouse-reqs.XXXXXX)"
trap 'rm -f "$REQS"' EXIT
"$PYTHON" - "$ROOT/pyproject.toml" "$TORCH_SPEC" >"$REQS" <<'PY'
import sys, tomllib
project = tomllib.load(open(sys.argv[1], "rb"))
print(sys.argv[2])
for requirement in project["project"]["dependencies"] + project["build-system"]["requires"]:
    print(requirement)
PY

download() { # REQUIREMENT ARGS... -> wheels for the image in $DIR
  # (pip's warnings about index locations that hold no such project are dropped: noise)
  "$PYTHON" -m pip download --quiet --disable-pip-version-check --dest "$DIR" \
    --only-binary=:all: --implementation cp --python-version "${full_version%.*}" \
    --abi "$abi" --abi abi3 --abi none "${platforms[@]}" "$@" 2>&1 |
    { grep -v "is ignored: it is neither a file nor a directory" || true; } >&2
  return "${PIPESTATUS[0]}"
}

# 2. Resolved on the host for the image's version and platform.
download -r "$REQS"

# 3. Resolved by the image itself, offline: what its markers want that the host's did not.
for round in 1 2 3 4 5; do
  report="$(docker run --rm --network none -v "$DIR:/wheels:ro" -v "$REQS:/reqs.txt:ro" \
    "$IMAGE" sh -c 'python3 -m venv /tmp/v >/dev/null && /tmp/v/bin/pip install --dry-run \
      --disable-pip-version-check --no-index --find-links /wheels -r /reqs.txt' 2>&1)" && {
    log "the image resolves every requirement offline: $(find "$DIR" -name '*.whl' | wc -l) wheels, $(du -sh "$DIR" | cut -f1)"
    exit 0
  }
  missing="$(sed -n 's/.*No matching distribution found for \([^ ;]*\).*/\1/p' <<<"$report" | head -n 1)"
  if [[ -z "$missing" ]]; then
    printf '%s\n' "$report" | tail -n 20 >&2
    log "the image cannot resolve the wheelhouse, and names no missing distribution"
    exit 1
  fi
  log "round $round: the image's Python $full_version also needs $missing"
  download "$missing"
done
log "still missing distributions after 5 rounds"
exit 1
