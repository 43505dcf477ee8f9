#!/usr/bin/env bash
# The side-by-side load benchmark: wrk against nginx directly, through
# remora-proxy's outbound listener, (when it can be had) through HAProxy,
# and (MESH) through two sidecars, the caller's and nginx's, in plaintext
# and in mutual TLS, all on 127.0.0.1, with the same wrk settings for each.
# How to run it and read it: benches/README.md.
#
# Settings (environment):
#   DURATION=10s     each wrk run (wrk's syntax: 10s, 1m)
#   CONNECTIONS=32   wrk -c
#   THREADS=1        wrk -t
#   ROUNDS=3         rounds of (direct, remora, haproxy); the table shows medians
#   WARMUP=2s        one unmeasured wrk run per target before the first round
#   HAPROXY=auto     auto: use it if installed or installable; on: required; off: skip
#   MESH=on          on: also the two-sidecar path, plaintext and mTLS; off: skip
#   NO_BUILD=1       skip `cargo build --release -p remora-proxy`
set -euo pipefail

DURATION=${DURATION:-10s}
CONNECTIONS=${CONNECTIONS:-32}
THREADS=${THREADS:-1}
ROUNDS=${ROUNDS:-3}
WARMUP=${WARMUP:-2s}
HAPROXY=${HAPROXY:-auto}
MESH=${MESH:-on}
NO_BUILD=${NO_BUILD:-}

# The service remora routes to nginx, named in the Host header.
SERVICE=upstream
# nginx's answer to every request.
BODY='hello from nginx'

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
SCRIPT=run.sh
# shellcheck source=benches/load/common.sh
source "$root/benches/load/common.sh"

# Seconds in a wrk duration (`10`, `10s`, `2m`, `1h`).
seconds() {
	case $1 in
	*s) echo "${1%s}" ;;
	*m) echo $((${1%m} * 60)) ;;
	*h) echo $((${1%h} * 3600)) ;;
	*) echo "$1" ;;
	esac
}
[[ $(seconds "$DURATION") =~ ^[0-9]+$ ]] || die "DURATION=$DURATION: want a whole number of s, m or h"
[[ $(seconds "$WARMUP") =~ ^[0-9]+$ ]] || die "WARMUP=$WARMUP: want a whole number of s, m or h"
[[ $ROUNDS =~ ^[1-9][0-9]*$ ]] || die "ROUNDS=$ROUNDS: want a positive integer"

# The response body must be nginx's: the target really reaches it.
check_body() {
	local name=$1 got
	shift
	got=$(curl -fsS --max-time 5 "$@") || die "$name: the request failed"
	[[ $got == "$BODY" ]] || die "$name: answered '$got', not nginx's body"
}

# Resident KiB of the processes in $1 (pids joined by commas), summed.
rss_kib() {
	local pid total=0
	for pid in ${1//,/ }; do
		total=$((total + $(awk '/^VmRSS:/ { print $2 }' "/proc/$pid/status")))
	done
	echo "$total"
}

threads() {
	awk '/^Threads:/ { print $2 }' "/proc/$1/status"
}

# wrk's latencies (`812.00us`, `1.20ms`, `2.01s`) in microseconds.
to_us() {
	awk '{ v = $1
		if (v ~ /us$/) { sub(/us$/, "", v); print v }
		else if (v ~ /ms$/) { sub(/ms$/, "", v); print v * 1000 }
		else if (v ~ /s$/) { sub(/s$/, "", v); print v * 1000000 }
		else print "nan" }'
}

# One wrk run: wrk_run OUT DURATION PORT [HOST]
wrk_run() {
	local out=$1 duration=$2 port=$3 host=${4:-} limit
	local header=()
	[[ -n $host ]] && header=(-H "Host: $host")
	limit=$(($(seconds "$duration") + 30))
	timeout --kill-after=5 "$limit" \
		wrk -t"$THREADS" -c"$CONNECTIONS" -d"$duration" --latency "${header[@]}" \
		"http://127.0.0.1:$port/" >"$out" || die "wrk failed against port $port: $(cat "$out")"
}

ensure nginx nginx || die "nginx is missing and could not be installed"
ensure wrk wrk || die "wrk is missing and could not be installed"
ensure curl curl || die "curl is missing and could not be installed"
peer_settings
release_binaries

# --- the upstream: nginx, one worker, one small fixed 200 ---
start_nginx "$BODY"
check_body nginx "http://127.0.0.1:$nginx_port/"

# --- remora-proxy, standalone, one service pointing at nginx ---
proxy_ports
remora_port=$outbound remora_inbound=$inbound remora_admin=$admin
cat >"$work/mesh.yaml" <<EOF
services:
  $SERVICE:
    endpoints:
      - address: 127.0.0.1:$nginx_port
EOF
"$proxy_bin" --config "$work/mesh.yaml" --app "127.0.0.1:$nginx_port" \
	--outbound "127.0.0.1:$remora_port" --inbound "127.0.0.1:$remora_inbound" \
	--admin "127.0.0.1:$remora_admin" --log-level warn --drain-timeout 1s \
	>"$work/remora.log" 2>&1 &
remora_pid=$!
pids+=("$remora_pid")
wait_ok "$remora_pid" "http://127.0.0.1:$remora_admin/ready" ||
	die "remora-proxy did not become ready: $(cat "$work/remora.log")"
check_body remora -H "Host: $SERVICE" "http://127.0.0.1:$remora_port/"

# --- HAProxy, one thread, in front of the same nginx ---
if [[ -n $with_haproxy ]]; then
	pick_port
	haproxy_port=$REPLY
	cat >"$work/haproxy.cfg" <<EOF
global
    nbthread 1
    maxconn 4096
defaults
    mode http
    option http-keep-alive
    timeout connect 1s
    timeout client 30s
    timeout server 30s
frontend bench
    bind 127.0.0.1:$haproxy_port
    default_backend nginx
backend nginx
    http-reuse always
    server nginx 127.0.0.1:$nginx_port
EOF
	haproxy -db -f "$work/haproxy.cfg" >"$work/haproxy.log" 2>&1 &
	haproxy_pid=$!
	pids+=("$haproxy_pid")
	wait_ok "$haproxy_pid" "http://127.0.0.1:$haproxy_port/" ||
		die "HAProxy did not start: $(cat "$work/haproxy.log")"
	check_body haproxy "http://127.0.0.1:$haproxy_port/"
fi

# --- two sidecars, the caller's and nginx's, on a control plane ---
# `mesh`: a control plane with identity off, whose sidecars talk
# plaintext; `mesh-mtls`: one with identity on, whose sidecars have
# certificates and talk mutual TLS, to each other and to it.
if [[ $MESH == on ]]; then
	mesh_tokens mtls client
	printf 'services:\n  plain: {}\n  mtls: { identity: mtls }\n' >"$work/mesh/mesh.yaml"
	start_control control-plain "$work/mesh/mesh.yaml" --insecure
	plain_control="http://127.0.0.1:$REPLY"
	start_control control-mtls "$work/mesh/mesh.yaml" --data-dir "$work/mesh/ca" --tokens "$work/mesh/tokens.yaml"
	mtls_control="https://127.0.0.1:$REPLY"

	start_sidecar plain-server "$plain_control" plain "127.0.0.1:$nginx_port" -
	plain_server=$sidecar_pid
	start_sidecar plain-client "$plain_control" client "127.0.0.1:$nginx_port" -
	plain_port=$REPLY plain_pids="$sidecar_pid,$plain_server"
	start_sidecar mtls-server "$mtls_control" mtls "127.0.0.1:$nginx_port" mtls
	mtls_server=$sidecar_pid
	start_sidecar mtls-client "$mtls_control" client "127.0.0.1:$nginx_port" client
	mtls_port=$REPLY mtls_pids="$sidecar_pid,$mtls_server"
	check_body mesh -H "Host: plain" "http://127.0.0.1:$plain_port/"
	check_body mesh-mtls -H "Host: mtls" "http://127.0.0.1:$mtls_port/"
	# The mtls path really is mutual TLS: its caller counts it so. (Read
	# whole first: `grep -q` quits at the first match, and curl, cut off
	# mid-write, would fail the pipeline.)
	metrics=$(curl -fsS "http://127.0.0.1:$sidecar_admin/metrics")
	grep -q 'direction="outbound".*tls="true"' <<<"$metrics" ||
		die "mesh-mtls: the caller's sidecar did not use mutual TLS"
fi

# Targets: name, port, Host header, pids of the proxies (none for direct).
targets=("direct $nginx_port - -" "remora $remora_port $SERVICE $remora_pid")
[[ -n $with_haproxy ]] && targets+=("haproxy $haproxy_port - $haproxy_pid")
if [[ $MESH == on ]]; then
	targets+=("mesh $plain_port plain $plain_pids" "mesh-mtls $mtls_port mtls $mtls_pids")
fi

declare -A rss_idle rss_load
for t in "${targets[@]}"; do
	read -r name port host pid <<<"$t"
	[[ $host == - ]] && host=
	if [[ $pid != - ]]; then
		rss_idle[$name]=$(rss_kib "$pid")
	fi
	if [[ $(seconds "$WARMUP") -gt 0 ]]; then
		echo "warming up $name ($WARMUP)..." >&2
		wrk_run "$work/warmup-$name.txt" "$WARMUP" "$port" "$host"
	fi
done

# Each round runs every target once, in turn, so that drift in the
# machine's load touches them all alike.
clk_tck=$(getconf CLK_TCK)
for ((round = 1; round <= ROUNDS; round++)); do
	for t in "${targets[@]}"; do
		read -r name port host pid <<<"$t"
		[[ $host == - ]] && host=
		echo "round $round/$ROUNDS: $name ($DURATION)..." >&2
		out="$work/wrk-$name-$round.txt"
		before=0
		[[ $pid != - ]] && before=$(cpu_ticks "$pid")
		wrk_run "$out" "$DURATION" "$port" "$host"
		after=0
		[[ $pid != - ]] && after=$(cpu_ticks "$pid")
		requests=$(awk '/ requests in / { print $1 }' "$out")
		[[ $requests =~ ^[0-9]+$ && $requests -gt 0 ]] || die "$name: wrk reported no requests: $(cat "$out")"
		awk '/^Requests\/sec:/ { print $2 }' "$out" >>"$work/$name.rps"
		awk '$1 == "50%" { print $2 }' "$out" | to_us >>"$work/$name.p50"
		awk '$1 == "99%" { print $2 }' "$out" | to_us >>"$work/$name.p99"
		# Non-2xx answers and socket errors: a healthy run has none.
		awk '/Non-2xx or 3xx responses:/ { n += $NF }
			/Socket errors:/ { gsub(/,/, ""); n += $4 + $6 + $8 + $10 }
			END { print n + 0 }' "$out" >>"$work/$name.errors"
		if [[ $pid != - ]]; then
			awk -v t=$((after - before)) -v hz="$clk_tck" -v n="$requests" \
				'BEGIN { print t / hz / n * 1e6 }' >>"$work/$name.cpu"
		fi
	done
	direct_rps=$(tail -n1 "$work/direct.rps")
	for t in "${targets[@]}"; do
		read -r name _ <<<"$t"
		awk -v p="$(tail -n1 "$work/$name.rps")" -v d="$direct_rps" \
			'BEGIN { print p / d }' >>"$work/$name.ratio"
	done
done
for t in "${targets[@]}"; do
	read -r name _ _ pid <<<"$t"
	[[ $pid != - ]] && rss_load[$name]=$(rss_kib "$pid")
done

# --- the table ---
echo
echo "wrk -t$THREADS -c$CONNECTIONS -d$DURATION --latency, $ROUNDS round(s), medians;" \
	"$(nproc) cores; $(nginx -v 2>&1 | sed 's/.*version: //'), 1 worker"
proxies="OS threads: remora-proxy $(threads "$remora_pid")"
[[ $MESH == on ]] && proxies+="; mesh, mesh-mtls: two sidecars each, CPU and memory summed"
if [[ -n $with_haproxy ]]; then
	proxies+=", $(haproxy -v | head -n1 | awk '{ print "HAProxy " $3 }') $(threads "$haproxy_pid") (nbthread 1)"
fi
echo "$proxies"
echo
printf '%-9s %12s %10s %10s %8s %12s %10s %10s %7s\n' \
	target 'requests/s' 'p50 (ms)' 'p99 (ms)' ratio 'cpu/req (us)' 'rss idle' 'rss load' errors
for t in "${targets[@]}"; do
	read -r name _ _ pid <<<"$t"
	rps=$(median <"$work/$name.rps")
	p50_ms=$(median <"$work/$name.p50" | awk '{ print $1 / 1000 }')
	p99_ms=$(median <"$work/$name.p99" | awk '{ print $1 / 1000 }')
	ratio=$(median <"$work/$name.ratio")
	errors=$(awk '{ n += $1 } END { print n + 0 }' "$work/$name.errors")
	cpu=- idle=- load=-
	if [[ $pid != - ]]; then
		cpu=$(median <"$work/$name.cpu" | awk '{ printf "%.1f", $1 }')
		idle=$(awk -v k="${rss_idle[$name]}" 'BEGIN { printf "%.1f MiB", k / 1024 }')
		load=$(awk -v k="${rss_load[$name]}" 'BEGIN { printf "%.1f MiB", k / 1024 }')
	fi
	printf '%-9s %12.0f %10.3f %10.3f %8.2f %12s %10s %10s %7s\n' \
		"$name" "$rps" "$p50_ms" "$p99_ms" "$ratio" "$cpu" "$idle" "$load" "$errors"
done
