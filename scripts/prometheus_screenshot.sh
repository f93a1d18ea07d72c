#!/usr/bin/env bash
# Screenshot of Prometheus's graph page while `aim serve` is under load (docs/prometheus-under-load.png).
# Needs Debian's prometheus, wrk and chromium; everything runs on 127.0.0.1 and stops by itself.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-docs/prometheus-under-load.png}
tmp=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$tmp"; }
trap cleanup EXIT

.venv/bin/aim serve --demo --port 8311 > "$tmp/serve.log" 2>&1 & pids+=($!)
for _ in $(seq 120); do curl -sf 127.0.0.1:8311/readyz >/dev/null && break; sleep 0.5; done
cat > "$tmp/prom.yml" <<YML
global: {scrape_interval: 1s}
scrape_configs: [{job_name: aim, static_configs: [{targets: ["127.0.0.1:8311"]}]}]
YML
prometheus --config.file="$tmp/prom.yml" --storage.tsdb.path="$tmp/data" \
  --web.listen-address=127.0.0.1:9391 > "$tmp/prom.log" 2>&1 & pids+=($!)

digit='[[0,0,5,13,9,1,0,0],[0,0,13,15,10,15,5,0],[0,3,15,2,0,11,8,0],[0,4,12,0,0,8,8,0],[0,5,8,0,0,9,8,0],[0,4,11,0,1,12,7,0],[0,2,14,5,10,12,0,0],[0,0,6,13,10,0,0,0]]'
echo "wrk.method = 'POST'; wrk.body = '{\"inputs\": [$digit]}'; wrk.headers['Content-Type'] = 'application/json'" > "$tmp/post.lua"
for tier in gold silver bronze; do
  key=$(grep -E "^  $tier " "$tmp/serve.log" | awk '{print $2}')
  wrk -t1 -c8 -d75s -s "$tmp/post.lua" -H "X-API-Key: $key" http://127.0.0.1:8311/predict > /dev/null & pids+=($!)
done
sleep 70
expr='histogram_quantile(0.99, sum by (tier, le) (rate(aim_request_duration_seconds_bucket{route="/predict"}[15s])))'
url="http://127.0.0.1:9391/graph?g0.expr=$(python3 -c 'import sys,urllib.parse;print(urllib.parse.quote(sys.argv[1]))' "$expr")&g0.tab=0&g0.range_input=2m"
chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
  --disable-background-networking --disable-component-update --disable-sync \
  --user-data-dir="$tmp/chrome" --window-size=1400,900 --virtual-time-budget=8000 \
  --screenshot="$PWD/$out" "$url" 2>/dev/null
echo "wrote $out"
