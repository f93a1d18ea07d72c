# AIM serving image. Works with the classic builder (Docker 20.10+) and BuildKit alike: no
# `# syntax=` line (it would pull a frontend image), no RUN --mount, no heredocs.
#
#   docker build -t aim-serving:local .                      # CPU torch from the PyTorch CPU index
#   docker build -t aim-serving:local \
#     --build-arg BASE_IMAGE=nvidia/cuda:12.4.1-runtime-ubuntu22.04 \
#     --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu124 .   # CUDA (docs/DEPLOY.md)
#
# Offline: put wheels of every dependency in ./wheelhouse (see docs/DEPLOY.md); when that
# directory holds wheels, nothing is fetched from an index.
ARG BASE_IMAGE=python:3.11-slim

# ---------------------------------------------------------------------------------------------
# builder: build wheels of the dependencies and install them into a venv at /opt/aim, then build
# the project's wheel into /dist. The runtime stage copies the venv (one layer that changes only
# with the dependencies; the wheels themselves never reach the image) and installs the project.
FROM ${BASE_IMAGE} AS builder

# Images without Python (nvidia/cuda) get the distribution's; python:*-slim and the debootstrap
# base already have it.
RUN if ! python3 -c "import ensurepip, venv" >/dev/null 2>&1; then \
      apt-get update \
      && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
           python3 python3-venv ca-certificates \
      && rm -rf /var/lib/apt/lists/*; \
    fi

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

# Which torch build to take when online: the CPU wheel by default (the open range in pyproject
# would otherwise pull the multi-GB CUDA build from PyPI). Ignored for an offline wheelhouse.
ARG TORCH_SPEC=torch
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu

# Torch first, in its own layer, so that source edits do not download it again. `wheelhous[e]`
# matches nothing when there is no wheelhouse; the Dockerfile is listed so the COPY never is empty.
# The torch wheel obtained is then pinned (constraints.txt) so that the resolver cannot swap in
# another build from PyPI.
COPY Dockerfile wheelhous[e] /wheels/
RUN set -eu; \
    rm /wheels/Dockerfile; \
    if ls /wheels/*.whl >/dev/null 2>&1; then \
      echo "offline build: installing from the wheelhouse only"; \
      echo "--no-index" > /wheels/pip-args; \
    else \
      python3 -m venv /tmp/pipenv; \
      /tmp/pipenv/bin/pip wheel --wheel-dir /wheels --index-url "$TORCH_INDEX_URL" "$TORCH_SPEC"; \
      rm -rf /tmp/pipenv; \
      : > /wheels/pip-args; \
    fi; \
    ls /wheels/torch-*.whl | sed -E 's#.*/torch-([^-]+)-.*#torch==\1#' > /wheels/constraints.txt; \
    cat /wheels/constraints.txt

# Dependencies next, into the venv, from pyproject.toml alone (it builds an empty aim-serving
# wheel that carries the requirements): editing service/ then rebuilds only the project's wheel.
COPY pyproject.toml READM[E].md /src/
RUN set -eu; \
    python3 -m venv /opt/aim; \
    /opt/aim/bin/pip wheel $(cat /wheels/pip-args) --find-links /wheels \
      -c /wheels/constraints.txt --wheel-dir /wheels /src; \
    /opt/aim/bin/pip install --no-index --find-links /wheels \
      -c /wheels/constraints.txt aim-serving; \
    /opt/aim/bin/pip uninstall -y aim-serving; \
    rm /wheels/aim_serving-*.whl

COPY service/ /src/service/
RUN /opt/aim/bin/pip wheel $(cat /wheels/pip-args) --find-links /wheels --no-deps \
      --wheel-dir /dist /src

# ---------------------------------------------------------------------------------------------
# runtime
FROM ${BASE_IMAGE} AS runtime

RUN if ! python3 -c "import venv" >/dev/null 2>&1; then \
      apt-get update \
      && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
           python3 python3-venv ca-certificates \
      && rm -rf /var/lib/apt/lists/*; \
    fi \
    && groupadd --system --gid 10001 aim \
    && useradd --system --uid 10001 --gid aim --home-dir /home/aim --create-home \
         --shell /usr/sbin/nologin aim \
    && install -d -o aim -g aim /home/aim/.cache   # calibration cache: mount a volume to keep it

COPY --from=builder /opt/aim /opt/aim
COPY --from=builder /dist/ /tmp/dist/
RUN /opt/aim/bin/pip install --no-cache-dir --disable-pip-version-check --no-index --no-deps \
      /tmp/dist/*.whl \
    && rm -rf /tmp/dist \
    && /opt/aim/bin/pip check --disable-pip-version-check \
    && /opt/aim/bin/aim --help >/dev/null
# A default config; mount your own at /etc/aim/config.yaml. Keys are never baked in.
COPY deploy/config/config.yaml /etc/aim/config.yaml

ENV PATH=/opt/aim/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/home/aim \
    MPLCONFIGDIR=/tmp/matplotlib

# Numeric so that Kubernetes' runAsNonRoot can check it without reading /etc/passwd.
USER 10001:10001
WORKDIR /home/aim
EXPOSE 8000

# Ready = model loaded and tiers calibrated; urlopen raises on the 503 answered before that.
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 \
  CMD ["python3", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/readyz', timeout=4)"]

# Extra arguments (`docker run IMAGE --device cuda`) are appended. For other subcommands use
# `docker run --entrypoint aim IMAGE keys create ...`.
ENTRYPOINT ["aim", "serve", "--host", "0.0.0.0", "--config", "/etc/aim/config.yaml", "--keys-file", "/etc/aim/keys.yaml"]
CMD []
