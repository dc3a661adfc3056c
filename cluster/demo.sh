#!/usr/bin/env bash
# A local 3-head wulfpack cluster on loopback with example nodes.
#   cluster/demo.sh          start, show status and nodes, keep running until Ctrl-C
#   cluster/demo.sh --exit   the same, then stop the heads (used by CI as a smoke test)
# Heads listen on 127.0.0.1:9701-9703 (gRPC) and :9781-9783 (HTTP); data lives in a temp dir removed on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --quiet --bins
BIN=target/debug
WORK=$(mktemp -d -t wulfpack-demo.XXXXXX)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT INT TERM

for i in 1 2 3; do
  cat > "$WORK/wulfd$i.yaml" <<CFG
id: $i
data_dir: $WORK/head$i
listen: 127.0.0.1:970$i
http_listen: 127.0.0.1:978$i
insecure: true                 # the demo: plaintext, no credentials (see OPERATIONS "Certificates")
cluster_name: demo
bootstrap:
  - {id: 1, addr: 127.0.0.1:9701}
  - {id: 2, addr: 127.0.0.1:9702}
  - {id: 3, addr: 127.0.0.1:9703}
CFG
  "$BIN/wulfd" --config "$WORK/wulfd$i.yaml" 2>"$WORK/wulfd$i.log" &
  PIDS+=($!)
done
export WW_HEADS=127.0.0.1:9701,127.0.0.1:9702,127.0.0.1:9703
WW="$BIN/wwctl"

# Wait (bounded) until the cluster answers a linearizable read.
for _ in $(seq 1 100); do
  if "$WW" --timeout 1 profile list >/dev/null 2>&1; then break; fi
  sleep 0.2
done

"$WW" node import cluster/examples/nodes.conf -y
"$WW" node add 'rack[1-2]-n[01-03]' --image rocky-9 --ipaddr 10.10.0.1 --ipmiaddr 10.10.1.1
echo
echo "\$ wwctl cluster status"
"$WW" cluster status
echo
echo "\$ wwctl node list"
"$WW" node list
echo
echo "\$ wwctl node list -a gpu02"
"$WW" node list -a gpu02

if [ "${1:-}" = "--exit" ]; then exit 0; fi
echo
echo "Demo cluster running (heads 127.0.0.1:9701-9703). Try:"
echo "  export WW_HEADS=$WW_HEADS; $WW node list -n"
echo "Ctrl-C stops it."
wait
