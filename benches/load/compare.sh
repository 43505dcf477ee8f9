#!/usr/bin/env bash
# Two builds of remora-proxy side by side: both run at once in front of one
# nginx, and take the same fixed number of requests in turn (h2load,
# HTTP/1.1), round after round. What each proxy process spent in CPU per
# request is read from /proc, so a noisy neighbour that slows the machine
# slows both alike instead of the run that happened to meet it.
# How to run it and read it: benches/README.md.
#
#   benches/load/compare.sh BEFORE_BIN AFTER_BIN
#
# Settings (environment):
#   REQUESTS=100000   requests per run
#   CONNECTIONS=32    h2load -c
#   ROUNDS=8          runs of each build, alternated; the table shows medians
set -euo pipefail

REQUESTS=${REQUESTS:-100000}
CONNECTIONS=${CONNECTIONS:-32}
ROUNDS=${ROUNDS:-8}
SCRIPT=compare.sh
# shellcheck source=benches/load/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

(($# == 2)) || die "usage: compare.sh BEFORE_BIN AFTER_BIN (two remora-proxy binaries)"
builds=(before after)
bins=("$1" "$2")
for bin in "${bins[@]}"; do
	[[ -x $bin ]] || die "$bin is not an executable"
done
[[ $REQUESTS =~ ^[1-9][0-9]*$ ]] || die "REQUESTS=$REQUESTS: want a positive integer"
[[ $ROUNDS =~ ^[1-9][0-9]*$ ]] || die "ROUNDS=$ROUNDS: want a positive integer"
ensure nginx nginx || die "nginx is missing and could not be installed"
ensure h2load nghttp2-client || die "h2load is missing and could not be installed"
ensure curl curl || die "curl is missing and could not be installed"

start_nginx hello

cat >"$work/mesh.yaml" <<EOF
services:
  upstream:
    endpoints: [ { address: "127.0.0.1:$nginx_port" } ]
EOF
ports=() proxies=()
for i in 0 1; do
	proxy_ports
	"${bins[i]}" --config "$work/mesh.yaml" --outbound "127.0.0.1:$outbound" \
		--inbound "127.0.0.1:$inbound" --admin "127.0.0.1:$admin" --log-level warn \
		>"$work/${builds[i]}.log" 2>&1 &
	pids+=($!)
	proxies+=($!)
	ports+=("$outbound")
	wait_ok "${pids[-1]}" "http://127.0.0.1:$admin/ready" ||
		die "the ${builds[i]} proxy did not become ready: $(cat "$work/${builds[i]}.log")"
done

# One run against build $1: prints CPU ns per request and requests/s.
run() {
	local i=$1 before after out="$work/h2load.out"
	before=$(cpu_ticks "${proxies[i]}")
	h2load --h1 -n "$REQUESTS" -c "$CONNECTIONS" -t 1 -H ':authority: upstream' \
		"http://127.0.0.1:${ports[i]}/" >"$out" 2>&1 || die "h2load failed: $(cat "$out")"
	after=$(cpu_ticks "${proxies[i]}")
	grep -q "status codes: $REQUESTS 2xx" "$out" || die "${builds[i]}: not every request answered 200: $(grep 'status codes' "$out")"
	local ticks_per_second
	ticks_per_second=$(getconf CLK_TCK)
	echo "$(((after - before) * 1000000000 / ticks_per_second / REQUESTS)) $(awk '/^finished in/ { print $4 }' "$out")"
}

echo "warming up..." >&2
run 0 >/dev/null
run 1 >/dev/null
for ((r = 1; r <= ROUNDS; r++)); do
	echo "round $r/$ROUNDS" >&2
	for i in 0 1; do
		run "$i" >>"$work/${builds[i]}.runs"
	done
done

echo
echo "h2load --h1 -c$CONNECTIONS -n$REQUESTS, $ROUNDS round(s) alternated, medians; $(nproc) cores"
printf '%-8s %12s %14s\n' build requests/s "cpu/req (ns)"
for i in 0 1; do
	printf '%-8s %12.0f %14.0f\n' "${builds[i]}" \
		"$(awk '{ print $2 }' "$work/${builds[i]}.runs" | median)" \
		"$(awk '{ print $1 }' "$work/${builds[i]}.runs" | median)"
done
