#!/usr/bin/env bash
# What connections cost a proxy in memory, and whether it is given back:
# the proxy's RSS at rest; per connection, holding IDLE connections that
# sent nothing, then IDLE kept-alive ones after one request each (with the
# upstream connection each needed, pooled); right after a burst of BURST
# connections making 10 requests each; and once the burst's clients have
# left.
#
#   benches/load/memory.sh [BASELINE_PROXY_BINARY]
#
# Runs target/release/remora-proxy (build it first: cargo build --release
# -p remora-proxy) and, when given, a baseline binary in the same run,
# against one nginx upstream. IDLE (default 1000), BURST (default 2000) and
# SETTLE (seconds after the burst, default 15) come from the environment.
set -euo pipefail
SCRIPT=memory.sh
cd "$(dirname "$0")/../.."
source benches/load/common.sh

IDLE=${IDLE:-1000}
BURST=${BURST:-2000}
SETTLE=${SETTLE:-15}
ensure nginx nginx || die "nginx is needed"
ensure python3 python3 || die "python3 is needed"
ulimit -n "$(ulimit -Hn)"

rss_kib() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status"; }

start_nginx "ok"

# Connects $3 clients making $4 requests each to port $2, holds them, and
# prints proxy $1's RSS then; closes them and waits for them to go.
held_rss() {
	local pid=$1 port=$2 count=$3 requests=$4 line
	coproc clients { python3 benches/load/connections.py "$port" orders "$count" "$requests"; }
	read -r line <&"${clients[0]}"
	[[ $line == "held $count failed 0" ]] || echo "  ($line)" >&2
	rss_kib "$pid"
	echo >&"${clients[1]}"
	read -r line <&"${clients[0]}"
	wait "$clients_PID" 2>/dev/null || true
}

measure() {
	local name=$1 binary=$2 pid idle silent held burst after
	proxy_ports
	cat >"$work/mesh-$name.yaml" <<MESH
services:
  orders:
    endpoints: [ { address: 127.0.0.1:$nginx_port } ]
MESH
	"$binary" --config "$work/mesh-$name.yaml" --outbound "127.0.0.1:$outbound" \
		--inbound "127.0.0.1:$inbound" --admin "127.0.0.1:$admin" --log-level warn \
		>"$work/proxy-$name.log" 2>&1 &
	pid=$!
	pids+=("$pid")
	wait_ok "$pid" "http://127.0.0.1:$admin/ready" || die "$name did not start: $(cat "$work/proxy-$name.log")"
	sleep 1
	idle=$(rss_kib "$pid")
	silent=$(held_rss "$pid" "$outbound" "$IDLE" 0)
	sleep 1
	held=$(held_rss "$pid" "$outbound" "$IDLE" 1)
	sleep 1
	burst=$(held_rss "$pid" "$outbound" "$BURST" 10)
	# The clients have gone, and (past its 4s idle timeout, checked as
	# often) the pool's connections to nginx: what the proxy gives back.
	sleep "$SETTLE"
	after=$(rss_kib "$pid")
	stop "$pid"
	awk -v n="$name" -v i="$idle" -v s="$silent" -v h="$held" -v c="$IDLE" -v b="$burst" -v a="$after" 'BEGIN {
		printf "%-10s %10.1f %12.1f %12.1f %12.1f %12.1f %6.2f\n", n, i / 1024, (s - i) / c, (h - i) / c, b / 1024, a / 1024, (a - i) / (b - i)
	}'
}

printf "%-10s %10s %12s %12s %12s %12s %6s\n" proxy 'rest (MiB)' 'KiB/silent' 'KiB/kept' 'burst (MiB)' 'after (MiB)' 'kept'
measure remora target/release/remora-proxy
if (($# > 0)); then
	measure baseline "$1"
fi
echo "KiB/silent: per connection that sent nothing ($IDLE held); KiB/kept: per connection kept alive"
echo "after one request, with the pooled upstream connection it needed; burst: $BURST connections x 10"
echo "requests; kept: the share of the burst's growth still resident ${SETTLE}s after its clients left"
