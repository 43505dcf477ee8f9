#!/usr/bin/env bash
# The soak: one proxy (release build) at a fixed rate for a long while, its
# service's three nginx endpoints replaced one at a time all along: every
# CHURN seconds a new endpoint joins the mesh file, the oldest is killed
# while still listed (the proxy meets it dead), then dropped from the file.
# A GET may never fail for it. Prints the load's 10-second windows, the
# proxy's RSS and open files as it goes, and a summary.
#
#   benches/load/soak.sh            # 10 minutes at 200 requests/s
#   DURATION=60 benches/load/soak.sh
#
# Settings (environment): DURATION=600 (seconds), RATE=200 (requests/s),
# CHURN=20 (seconds between endpoint replacements).
set -euo pipefail
SCRIPT=soak.sh
cd "$(dirname "$0")/../.."
source benches/load/common.sh

DURATION=${DURATION:-600}
RATE=${RATE:-200}
CHURN=${CHURN:-20}
binary=${PROXY:-target/release/remora-proxy}
[[ -x $binary ]] || die "build it first: cargo build --release -p remora-proxy"
ensure nginx nginx || die "nginx is needed"
ensure python3 python3 || die "python3 is needed"

# nginx instances by port, oldest first; nginx_pids[port] ends one.
endpoints=()
declare -A nginx_pids
add_endpoint() {
	start_nginx "ok"
	endpoints+=("$nginx_port")
	nginx_pids[$nginx_port]=${pids[-1]}
}
write_mesh() {
	local port list=""
	for port in "$@"; do
		list+="{ address: 127.0.0.1:$port }, "
	done
	cat >"$work/mesh.yaml.new" <<MESH
services:
  orders:
    endpoints: [ ${list%, } ]
MESH
	mv "$work/mesh.yaml.new" "$work/mesh.yaml"
}
rss_kib() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status"; }

for _ in 1 2 3; do
	# Each nginx gets a directory of its own.
	work_root=$work
	work=$work_root/n$RANDOM
	mkdir -p "$work"
	add_endpoint
	work=$work_root
done
write_mesh "${endpoints[@]}"
proxy_ports
"$binary" --config "$work/mesh.yaml" --outbound "127.0.0.1:$outbound" --inbound "127.0.0.1:$inbound" \
	--admin "127.0.0.1:$admin" --log-level "${LOG_LEVEL:-warn}" >"$work/proxy.log" 2>&1 &
proxy=$!
pids+=("$proxy")
wait_ok "$proxy" "http://127.0.0.1:$admin/ready" || die "the proxy did not start: $(cat "$work/proxy.log")"
echo "soak: ${DURATION}s at $RATE requests/s, an endpoint replaced every ${CHURN}s"
echo "proxy at rest: RSS $(rss_kib "$proxy") KiB, $(ls "/proc/$proxy/fd" | wc -l) open files"

python3 benches/load/steady.py "$outbound" orders "$RATE" "$DURATION" >"$work/load.log" &
load=$!
pids+=("$load")
started=$SECONDS
replaced=0
tail -f "$work/load.log" --pid "$load" &
while kill -0 "$load" 2>/dev/null; do
	sleep "$CHURN"
	kill -0 "$load" 2>/dev/null || break
	old=${endpoints[0]}
	work_root=$work
	work=$work_root/n$RANDOM
	mkdir -p "$work"
	add_endpoint
	work=$work_root
	write_mesh "${endpoints[@]}"
	sleep 2
	stop "${nginx_pids[$old]}"
	sleep 2
	endpoints=("${endpoints[@]:1}")
	write_mesh "${endpoints[@]}"
	replaced=$((replaced + 1))
	echo "$((SECONDS - started))s: endpoint $replaced replaced; proxy RSS $(rss_kib "$proxy") KiB, $(ls "/proc/$proxy/fd" | wc -l) open files"
done
wait "$load" || true
sleep 0.5
echo "endpoints replaced: $replaced; proxy at the end: RSS $(rss_kib "$proxy") KiB, $(ls "/proc/$proxy/fd" | wc -l) open files"
grep '^total' "$work/load.log"
# The proxy's log, for a run that met errors.
[[ -z ${KEEP_LOG:-} ]] || cp "$work/proxy.log" "$KEEP_LOG"
