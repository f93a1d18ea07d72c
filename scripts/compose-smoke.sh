#!/usr/bin/env bash
# End-to-end smoke test of the container stack, with no container registry:
#
#   1. make sure dockerd runs (installs docker.io/docker-compose with apt, starts dockerd if needed)
#   2. build the debootstrap base image (scripts/build-base-image.sh) unless it exists
#   3. build a Prometheus image from Debian's package on that base (deploy/prometheus/Dockerfile.local)
#   4. download a wheelhouse on the host for the image's own Python (scripts/build-wheelhouse.sh)
#      and build the service image offline from it
#   5. create API keys with the image's `aim keys create`, bring up `redis`, two `aim` replicas,
#      `nginx` in front of them and `prometheus` with compose (redis and nginx: Debian's packages)
#   6. wait for /readyz and the Docker HEALTHCHECK, call the service through the SDK (aim_client)
#   7. check that Prometheus scraped `aim_` series and that every dashboard query evaluates
#   8. tear everything down and print a summary with timings
#
# Grafana is not in Debian's archive and its image cannot be pulled here, so it is not started;
# its provisioning and dashboard are checked statically by tests/deploy and their queries here.
#
# Environment (all optional):
#   SMOKE_AIM_PORT=18000 SMOKE_PROMETHEUS_PORT=19090   host ports (defaults avoid 8000/9090)
#   SMOKE_READY_TIMEOUT=600   seconds to wait for /readyz (start-up calibrates the tiers)
#   TORCH_SPEC=torch==2.13.0  the torch the wheelhouse takes (pip config decides CPU or CUDA build)
#   BASE_IMAGE=aim-base:bookworm  AIM_IMAGE=aim-serving:smoke  PROMETHEUS_IMAGE=aim-prometheus:local
#   KEEP_STACK=1              leave the stack running (tear down: see the last lines printed)
#   PYTHON=.venv/bin/python   the host Python that downloads wheels and runs the SDK
#
# Every failure ends with `compose smoke: FAILED in phase "<phase>": <why>` and the phase timings;
# a machine that cannot run a Docker engine fails in the first phase, saying so.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

AIM_PORT="${SMOKE_AIM_PORT:-18000}"
PROMETHEUS_PORT="${SMOKE_PROMETHEUS_PORT:-19090}"
READY_TIMEOUT="${SMOKE_READY_TIMEOUT:-600}"
TORCH_SPEC="${TORCH_SPEC:-torch==2.13.0}"
BASE_IMAGE="${BASE_IMAGE:-aim-base:bookworm}"
AIM_IMAGE="${AIM_IMAGE:-aim-serving:smoke}"
PROMETHEUS_IMAGE="${PROMETHEUS_IMAGE:-aim-prometheus:local}"
REDIS_IMAGE="${REDIS_IMAGE:-aim-redis:local}"
NGINX_IMAGE="${NGINX_IMAGE:-aim-nginx:local}"
PROJECT="aimsmoke"
LOG_DIR="$ROOT/out/compose-smoke"
WHEELHOUSE="$ROOT/wheelhouse"
mkdir -p "$LOG_DIR"

START=$SECONDS
PHASES=()
PHASE_NAME=""
PHASE_START=$SECONDS
DOCKERD_PID=""
STACK_UP=0
WORK=""
RESULT="FAILED"

log() { printf '[compose-smoke %4ds] %s\n' "$((SECONDS - START))" "$*" >&2; }

phase() {
  end_phase
  PHASE_NAME="$1"
  PHASE_START=$SECONDS
  log "== $1"
}

end_phase() {
  if [[ -n "$PHASE_NAME" ]]; then
    PHASES+=("$(printf '%-44s %5ds' "$PHASE_NAME" "$((SECONDS - PHASE_START))")")
    PHASE_NAME=""
  fi
}

FAILURE=""
die() {
  FAILURE="in phase \"$PHASE_NAME\": $*"
  log "ERROR $FAILURE"
  exit 1
}

# wait_for SECONDS DESCRIPTION COMMAND...: retry COMMAND every 2s until it succeeds or time is up.
wait_for() {
  local timeout="$1" what="$2" deadline=$((SECONDS + $1))
  shift 2
  until "$@" >/dev/null 2>&1; do
    if ((SECONDS >= deadline)); then
      log "gave up after ${timeout}s waiting for $what"
      return 1
    fi
    sleep 2
  done
}

compose() {
  "${COMPOSE[@]}" -p "$PROJECT" -f "$ROOT/docker-compose.yml" "$@"
}

dump_logs() {
  if ((STACK_UP)); then
    log "last container logs (full logs: $LOG_DIR/compose.log):"
    compose logs --no-color >"$LOG_DIR/compose.log" 2>&1 || true
    tail -n 60 "$LOG_DIR/compose.log" >&2 || true
  fi
}

cleanup() {
  local rc=$?
  set +e
  if ((rc != 0)) && [[ -z "$FAILURE" ]]; then
    FAILURE="in phase \"$PHASE_NAME\": a command exited with status $rc (see the lines above)"
  fi
  end_phase
  ((rc == 0)) || dump_logs
  if ((STACK_UP)); then
    if [[ "${KEEP_STACK:-0}" == 1 ]]; then
      log "KEEP_STACK=1: stack left running; tear down with:"
      log "  ${COMPOSE[*]} -p $PROJECT -f docker-compose.yml down -v"
    else
      log "tearing down the stack"
      compose down -v --remove-orphans >>"$LOG_DIR/compose.log" 2>&1
    fi
  fi
  [[ -n "$WORK" ]] && rm -rf "$WORK"
  if [[ -n "$DOCKERD_PID" && "${KEEP_STACK:-0}" != 1 ]]; then
    log "stopping the dockerd this script started (pid $DOCKERD_PID)"
    kill "$DOCKERD_PID" 2>/dev/null
    for _ in $(seq 1 30); do kill -0 "$DOCKERD_PID" 2>/dev/null || break; sleep 1; done
  fi
  {
    echo
    echo "compose smoke: $RESULT${FAILURE:+ $FAILURE} in $((SECONDS - START))s (logs in ${LOG_DIR#"$ROOT"/})"
    for line in "${PHASES[@]}"; do echo "  $line"; done
  } >&2
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- 1. Docker ----------------------------------------------------------------------------------
phase "docker engine and compose"
need=()
command -v dockerd >/dev/null 2>&1 || need+=(docker.io)
command -v docker >/dev/null 2>&1 || need+=(docker.io)
docker compose version >/dev/null 2>&1 || command -v docker-compose >/dev/null 2>&1 ||
  need+=(docker-compose)
if ((${#need[@]})); then
  log "installing ${need[*]} (Debian packages)"
  ((EUID == 0)) || die "not root: cannot install ${need[*]}; install them or run as root"
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
    --no-install-recommends $(printf '%s\n' "${need[@]}" | sort -u) iptables; } \
    >"$LOG_DIR/apt.log" 2>&1 || { tail -n 20 "$LOG_DIR/apt.log" >&2; die "apt-get install ${need[*]} failed"; }
fi
if docker compose version >/dev/null 2>&1; then COMPOSE=(docker compose); else COMPOSE=(docker-compose); fi
if ! docker info >/dev/null 2>&1; then
  log "starting dockerd (log: ${LOG_DIR#"$ROOT"/}/dockerd.log)"
  dockerd >"$LOG_DIR/dockerd.log" 2>&1 &
  DOCKERD_PID=$!
  deadline=$((SECONDS + 60))
  until docker info >/dev/null 2>&1; do
    if ! kill -0 "$DOCKERD_PID" 2>/dev/null || ((SECONDS >= deadline)); then
      tail -n 15 "$LOG_DIR/dockerd.log" >&2
      kill -0 "$DOCKERD_PID" 2>/dev/null || DOCKERD_PID=""
      die "cannot start a Docker engine on this machine (dockerd log above): the smoke needs one"
    fi
    sleep 1
  done
fi
log "docker engine $(docker version --format '{{.Server.Version}}'), ${COMPOSE[*]}"

# Stop a stack left over by an interrupted run before reusing its name and ports.
compose down -v --remove-orphans >/dev/null 2>&1 || true

# --- 2-3. Base and Prometheus images --------------------------------------------------------------
phase "base image $BASE_IMAGE"
"$ROOT/scripts/build-base-image.sh" "$BASE_IMAGE"

phase "prometheus image $PROMETHEUS_IMAGE"
if ! docker image inspect "$PROMETHEUS_IMAGE" >/dev/null 2>&1; then
  docker build --build-arg "BASE_IMAGE=$BASE_IMAGE" -t "$PROMETHEUS_IMAGE" \
    -f deploy/prometheus/Dockerfile.local deploy/prometheus >"$LOG_DIR/prometheus-build.log" 2>&1 ||
    { tail -n 30 "$LOG_DIR/prometheus-build.log" >&2; die "prometheus image build failed"; }
fi

for pair in "redis:$REDIS_IMAGE" "nginx:$NGINX_IMAGE"; do
  name="${pair%%:*}" image="${pair#*:}"
  phase "$name image $image"
  if ! docker image inspect "$image" >/dev/null 2>&1; then
    docker build --build-arg "BASE_IMAGE=$BASE_IMAGE" -t "$image" \
      -f "deploy/$name/Dockerfile.local" "deploy/$name" >"$LOG_DIR/$name-build.log" 2>&1 ||
      { tail -n 30 "$LOG_DIR/$name-build.log" >&2; die "$name image build failed"; }
  fi
done

# --- 4. Wheelhouse and service image ------------------------------------------------------------
phase "wheelhouse"
PYTHON="${PYTHON:-}"
if [[ -z "$PYTHON" ]]; then
  if [[ -x "$ROOT/.venv/bin/python" ]]; then PYTHON="$ROOT/.venv/bin/python"; else PYTHON=python3; fi
fi
# Resolved for the image's own interpreter (its environment markers), not the host's.
PYTHON="$PYTHON" TORCH_SPEC="$TORCH_SPEC" "$ROOT/scripts/build-wheelhouse.sh" "$BASE_IMAGE" \
  "$WHEELHOUSE" >"$LOG_DIR/wheelhouse.log" 2>&1 ||
  { tail -n 30 "$LOG_DIR/wheelhouse.log" >&2; die "the wheelhouse could not be built (log above)"; }
tail -n 1 "$LOG_DIR/wheelhouse.log" >&2

phase "service image $AIM_IMAGE"
docker build --build-arg "BASE_IMAGE=$BASE_IMAGE" -t "$AIM_IMAGE" . >"$LOG_DIR/aim-build.log" 2>&1 ||
  { tail -n 40 "$LOG_DIR/aim-build.log" >&2; die "service image build failed"; }
log "$(docker image inspect --format '{{.Size}}' "$AIM_IMAGE" | awk '{printf "%.0f MB", $1/1e6}')"

# --- 5. Keys, secret, stack ---------------------------------------------------------------------
phase "keys and compose up"
WORK="$(mktemp -d /tmp/aim-compose-smoke.XXXXXX)"
create_key() { # TIER -> prints the plaintext key; the image's CLI appends the hash to keys.yaml
  docker run --rm --user 0:0 --entrypoint aim -v "$WORK:/out" "$AIM_IMAGE" \
    keys create --keys-file /out/keys.yaml --tier "$1" --id "smoke-$1" | tail -n 1
}
GOLD_KEY="$(create_key gold)"
BRONZE_KEY="$(create_key bronze)"
[[ -n "$GOLD_KEY" && -n "$BRONZE_KEY" ]] || die "aim keys create printed no key"
"$PYTHON" -c 'import secrets; print(secrets.token_hex(32))' >"$WORK/aim-secret"
# Compose without Swarm bind-mounts secrets as they are: the container's uid 10001 must read them.
chmod 0644 "$WORK/keys.yaml" "$WORK/aim-secret"

export AIM_IMAGE PROMETHEUS_IMAGE REDIS_IMAGE NGINX_IMAGE AIM_PORT PROMETHEUS_PORT
export AIM_KEYS_FILE="$WORK/keys.yaml" AIM_SECRET_PATH="$WORK/aim-secret"
STACK_UP=1
# nginx waits for healthy aim replicas, so this returns once both are ready (or fails).
compose up -d --no-build redis aim nginx prometheus >"$LOG_DIR/compose.log" 2>&1 ||
  { cat "$LOG_DIR/compose.log" >&2; die "compose up failed"; }

phase "aim ready (/readyz, HEALTHCHECK)"
AIM_URL="http://127.0.0.1:$AIM_PORT"
PROMETHEUS_URL="http://127.0.0.1:$PROMETHEUS_PORT"
read -r -a aim_containers <<<"$(compose ps -q aim | tr '\n' ' ')"
((${#aim_containers[@]} == 2)) || die "expected 2 aim replicas, found ${#aim_containers[@]}"
# readyz: 0 ready, 1 not yet (loading, or not listening yet), 2 given up (load failed, container
# stopped or restarted): then waiting longer cannot help.
readyz() {
  local state container
  for container in "${aim_containers[@]}"; do
    state="$(docker inspect -f '{{.State.Status}} {{.RestartCount}}' "$container")"
    [[ "$state" == "running 0" ]] || { log "aim container $container: $state"; return 2; }
  done
  "$PYTHON" - "$AIM_URL/readyz" <<'PY'
import json, sys, urllib.error, urllib.request
try:
    urllib.request.urlopen(sys.argv[1], timeout=5)
except urllib.error.HTTPError as err:
    sys.exit(2 if json.load(err).get("status") == "failed" else 1)
except OSError:
    sys.exit(1)
PY
}
deadline=$((SECONDS + READY_TIMEOUT))
until readyz; do
  (($? == 1)) || die "aim failed to start: /readyz says so, or the container stopped"
  ((SECONDS < deadline)) || die "aim not ready after ${READY_TIMEOUT}s"
  sleep 2
done
healthy() {
  local container
  for container in "${aim_containers[@]}"; do
    [[ "$(docker inspect -f '{{.State.Health.Status}}' "$container")" == healthy ]] || return 1
  done
}
wait_for 90 "the Docker HEALTHCHECK to report healthy" healthy || die "HEALTHCHECK not healthy"

# --- 6. SDK -------------------------------------------------------------------------------------
phase "requests through aim_client"
SDK_PYTHON="$PYTHON"
if ! "$SDK_PYTHON" -c 'import aim_client' >/dev/null 2>&1; then
  SDK_PYTHON="$LOG_DIR/sdk-venv/bin/python"
  if ! "$SDK_PYTHON" -c 'import aim_client' >/dev/null 2>&1; then
    log "installing clients/python into ${LOG_DIR#"$ROOT"/}/sdk-venv"
    python3 -m venv "$LOG_DIR/sdk-venv"
    "$SDK_PYTHON" -m pip install --quiet --disable-pip-version-check "$ROOT/clients/python" \
      >"$LOG_DIR/sdk-install.log" 2>&1 || die "installing aim_client failed"
  fi
fi
AIM_URL="$AIM_URL" GOLD_KEY="$GOLD_KEY" BRONZE_KEY="$BRONZE_KEY" "$SDK_PYTHON" - <<'PY'
import os

from aim_client import AimClient, AuthenticationError

url = os.environ["AIM_URL"]
# An 8x8 "digit" with values 0-16, the embedded model's input.
image = [[(3 * r + 5 * c) % 17 for c in range(8)] for r in range(8)]
for tier, key in (("gold", os.environ["GOLD_KEY"]), ("bronze", os.environ["BRONZE_KEY"])):
    with AimClient(url, api_key=key) as client:
        info = client.model_info()
        for _ in range(5):
            result = client.predict([image, image])
        labels = [getattr(p, "label", "?") for p in result]
        print(f"{tier}: model={info.name!r} task={info.task} tiers={info.tiers} labels={labels}")
        assert result.tier == tier, (result.tier, tier)
        assert len(result) == 2
with AimClient(url, api_key="not-a-key", max_retries=0) as client:
    try:
        client.predict([image])
    except AuthenticationError:
        print("unknown key: 401 as expected")
    else:
        raise SystemExit("a request with an unknown key was served")
PY

# --- 7. Prometheus ------------------------------------------------------------------------------
phase "prometheus scraped aim_ series"
query() { # QUERY -> the JSON answer of Prometheus's instant query API
  "$PYTHON" - "$PROMETHEUS_URL" "$1" <<'PY'
import json, sys, urllib.parse, urllib.request
url = f"{sys.argv[1]}/api/v1/query?" + urllib.parse.urlencode({"query": sys.argv[2]})
print(json.dumps(json.load(urllib.request.urlopen(url, timeout=10))))
PY
}
has_requests() {
  query 'aim_requests_total{tier="gold"}' | grep -q '"result": \[{'
}
wait_for 60 "aim_requests_total in Prometheus" has_requests || die "no aim_ series in Prometheus"
query 'count by (__name__) ({__name__=~"aim_.+"})' | "$PYTHON" -c '
import json, sys
names = sorted(r["metric"]["__name__"] for r in json.load(sys.stdin)["data"]["result"])
print(f"{len(names)} aim_ series names in Prometheus: " + ", ".join(names))
' >&2

phase "dashboard queries evaluate"
"$PYTHON" - "$PROMETHEUS_URL" deploy/grafana/dashboards/aim.json <<'PY'
import json, sys, urllib.error, urllib.parse, urllib.request

base, path = sys.argv[1], sys.argv[2]
exprs = [t["expr"] for p in json.load(open(path))["panels"] for t in p.get("targets", [])]
bad = []
for expr in exprs:
    url = f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    try:
        answer = json.load(urllib.request.urlopen(url, timeout=10))
    except urllib.error.HTTPError as err:
        answer = json.load(err)
    if answer.get("status") != "success":
        bad.append(f"{expr}: {answer.get('error')}")
print(f"{len(exprs) - len(bad)}/{len(exprs)} dashboard queries evaluate", file=sys.stderr)
if bad:
    raise SystemExit("\n".join(bad))
PY

end_phase
RESULT="PASSED"
