#!/usr/bin/env bash
# The side-by-side load benchmark for opaque TCP (a `protocol: tcp`
# service): redis-benchmark against redis-server directly, through one
# remora-proxy's `--tcp-listen` listener, (when it can be had) through
# HAProxy in `mode tcp`, and (MESH) through two sidecars, the caller's and
# redis's, in plaintext and in mutual TLS, all on 127.0.0.1, with the same
# redis-benchmark settings for each. How to run it and read it:
# benches/README.md.
#
# Settings (environment):
#   REQUESTS=200000  redis-benchmark -n, per test and target in each round
#   CLIENTS=50       redis-benchmark -c: connections, each one stream
#   PIPELINE=1       redis-benchmark -P: commands in flight per connection
#   ROUNDS=3         rounds of every target and test; the table shows medians
#   WARMUP=10000     PINGs per target before the first round; 0 for none
#   HAPROXY=auto     auto: use it if installed or installable; on: required; off: skip
#   MESH=on          on: also the two-sidecar path, plaintext and mTLS; off: skip
#   NO_BUILD=1       skip `cargo build --release -p remora-proxy -p remora-control`
set -euo pipefail

REQUESTS=${REQUESTS:-200000}
CLIENTS=${CLIENTS:-50}
PIPELINE=${PIPELINE:-1}
ROUNDS=${ROUNDS:-3}
WARMUP=${WARMUP:-10000}
HAPROXY=${HAPROXY:-auto}
MESH=${MESH:-on}
NO_BUILD=${NO_BUILD:-}

# redis-benchmark's tests, each run on its own so that the proxies' CPU is
# known per test: a PING answered without touching the keyspace (the
# cheapest round trip there is, so the proxy's share is largest), then a
# write and a read of a small value.
TESTS=(ping_mbulk set get)
# The `tcp` service, as the mesh files and --tcp-listen name it.
SERVICE=redis

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
SCRIPT=tcp.sh
# shellcheck source=benches/load/common.sh
source "$root/benches/load/common.sh"

[[ $REQUESTS =~ ^[1-9][0-9]*$ ]] || die "REQUESTS=$REQUESTS: want a positive integer"
[[ $CLIENTS =~ ^[1-9][0-9]*$ ]] || die "CLIENTS=$CLIENTS: want a positive integer"
[[ $PIPELINE =~ ^[1-9][0-9]*$ ]] || die "PIPELINE=$PIPELINE: want a positive integer"
[[ $ROUNDS =~ ^[1-9][0-9]*$ ]] || die "ROUNDS=$ROUNDS: want a positive integer"
[[ $WARMUP =~ ^[0-9]+$ ]] || die "WARMUP=$WARMUP: want a whole number of requests"

ensure redis-server redis-server || die "redis-server is missing and could not be installed"
ensure redis-benchmark redis-tools || die "redis-benchmark is missing and could not be installed"
ensure curl curl || die "curl is missing and could not be installed"
peer_settings

# Every client connection is a socket in redis-benchmark, in each proxy on
# the way (two: the app's and the one onward) and in redis, and the
# proxy's --max-connections default is a quarter of this limit: raise it so
# that a large CLIENTS is not cut short by a default soft limit of 1024.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

release_binaries

# One PING through port $1: prints the answer, or nothing. Bounded, because
# a client whose connection is accepted but never answered waits forever.
ping_port() {
	timeout --kill-after=1 2 redis-cli -h 127.0.0.1 -p "$1" PING 2>/dev/null || true
}

# Waits (10s at most) until port $2 answers PING with PONG while process $1
# lives.
wait_pong() {
	local pid=$1 port=$2 deadline=$((SECONDS + 10)) i
	for ((i = 0; i < 100 && SECONDS < deadline; i++)); do
		kill -0 "$pid" 2>/dev/null || return 1
		[[ $(ping_port "$port") == PONG ]] && return 0
		sleep 0.1
	done
	return 1
}

# The answer must be redis's: the target really reaches it.
check_pong() {
	local name=$1 port=$2 got
	got=$(ping_port "$port")
	[[ $got == PONG ]] || die "$name: answered PING with '$got', not PONG"
}

# One redis-benchmark run: bench_run OUT TEST REQUESTS PORT. redis-benchmark
# never gives up on a port that does not answer, and exits on the first
# broken connection, so the time limit bounds the one and the exit status
# reports the other. The limit allows 1000 requests a second, far below
# what any target here does.
bench_run() {
	local out=$1 test=$2 requests=$3 port=$4
	timeout --kill-after=5 $((30 + requests / 1000)) \
		redis-benchmark -h 127.0.0.1 -p "$port" -q -t "$test" -n "$requests" \
		-c "$CLIENTS" -P "$PIPELINE" --csv >"$out" 2>"$out.err" ||
		die "redis-benchmark $test failed against port $port (status $?): $(cat "$out.err" "$out")"
}

# The one value of a /metrics text ($1) whose series starts with $2 and
# holds every label in $3... ; 0 if none does.
metric() {
	local text=$1 name=$2
	shift 2
	awk -v name="$name" -v labels="$*" '
		index($0, name "{") == 1 {
			n = split(labels, want, " ")
			for (i = 1; i <= n; i++) if (index($0, want[i]) == 0) next
			sum += $NF
		}
		END { print sum + 0 }' <<<"$text"
}

# --- redis, no persistence, so that SET measures the network path and
# not the disk ---
pick_port
redis_port=$REPLY
mkdir -p "$work/redis"
cat >"$work/redis/redis.conf" <<EOF
bind 127.0.0.1
port $redis_port
daemonize no
save ""
appendonly no
dir $work/redis
logfile $work/redis/redis.log
EOF
redis-server "$work/redis/redis.conf" >"$work/redis/out.log" 2>&1 &
redis_pid=$!
pids+=("$redis_pid")
wait_pong "$redis_pid" "$redis_port" ||
	die "redis-server did not start: $(cat "$work/redis/redis.log" "$work/redis/out.log" 2>/dev/null)"

# --- remora-proxy, standalone, one `tcp` service pointing at redis ---
proxy_ports
pick_port
remora_port=$REPLY
cat >"$work/mesh.yaml" <<EOF
services:
  $SERVICE:
    protocol: tcp
    endpoints:
      - address: 127.0.0.1:$redis_port
EOF
"$proxy_bin" --config "$work/mesh.yaml" --tcp-listen "$SERVICE=127.0.0.1:$remora_port" \
	--app "127.0.0.1:$redis_port" --outbound "127.0.0.1:$outbound" --inbound "127.0.0.1:$inbound" \
	--admin "127.0.0.1:$admin" --log-level warn --drain-timeout 1s \
	>"$work/remora.log" 2>&1 &
remora_pid=$!
pids+=("$remora_pid")
wait_ok "$remora_pid" "http://127.0.0.1:$admin/ready" ||
	die "remora-proxy did not become ready: $(cat "$work/remora.log")"
check_pong remora "$remora_port"

# --- HAProxy, one thread, in front of the same redis ---
if [[ -n $with_haproxy ]]; then
	pick_port
	haproxy_port=$REPLY
	cat >"$work/haproxy.cfg" <<EOF
global
    nbthread 1
    maxconn 4096
defaults
    mode tcp
    timeout connect 1s
    timeout client 30s
    timeout server 30s
frontend bench
    bind 127.0.0.1:$haproxy_port
    default_backend redis
backend redis
    server redis 127.0.0.1:$redis_port
EOF
	haproxy -db -f "$work/haproxy.cfg" >"$work/haproxy.log" 2>&1 &
	haproxy_pid=$!
	pids+=("$haproxy_pid")
	wait_pong "$haproxy_pid" "$haproxy_port" || die "HAProxy did not start: $(cat "$work/haproxy.log")"
fi

# --- two sidecars, the caller's and redis's, on a control plane ---
# `mesh`: a control plane with identity off, whose sidecars carry a
# stream in plain TCP; `mesh-mtls`: one with identity on, whose sidecars
# have certificates and carry it in mutual TLS.
if [[ $MESH == on ]]; then
	mesh_tokens "$SERVICE" client
	printf 'services:\n  %s: { protocol: tcp }\n' "$SERVICE" >"$work/mesh/plain.yaml"
	printf 'services:\n  %s: { protocol: tcp, identity: %s }\n' "$SERVICE" "$SERVICE" >"$work/mesh/mtls.yaml"
	start_control control-plain "$work/mesh/plain.yaml" --insecure
	plain_control="http://127.0.0.1:$REPLY"
	start_control control-mtls "$work/mesh/mtls.yaml" --data-dir "$work/mesh/ca" --tokens "$work/mesh/tokens.yaml"
	mtls_control="https://127.0.0.1:$REPLY"

	# Each caller's app is redis too (see start_sidecar); it never calls it.
	redis="127.0.0.1:$redis_port"
	start_sidecar plain-server "$plain_control" "$SERVICE" "$redis" -
	plain_server=$sidecar_pid plain_server_admin=$sidecar_admin
	pick_port
	plain_port=$REPLY
	start_sidecar plain-client "$plain_control" client "$redis" - --tcp-listen "$SERVICE=127.0.0.1:$plain_port"
	plain_pids="$sidecar_pid,$plain_server"

	start_sidecar mtls-server "$mtls_control" "$SERVICE" "$redis" "$SERVICE"
	mtls_server=$sidecar_pid mtls_server_admin=$sidecar_admin
	pick_port
	mtls_port=$REPLY
	start_sidecar mtls-client "$mtls_control" client "$redis" client --tcp-listen "$SERVICE=127.0.0.1:$mtls_port"
	mtls_pids="$sidecar_pid,$mtls_server" mtls_client_admin=$sidecar_admin

	# The caller's sidecar learns the service's endpoints from the control
	# plane on its first stream, so the first PING may find none yet.
	wait_pong "$plain_server" "$plain_port" || die "mesh: no PONG through the sidecars: $(cat "$work/mesh/plain-client.log")"
	wait_pong "$mtls_server" "$mtls_port" || die "mesh-mtls: no PONG through the sidecars: $(cat "$work/mesh/mtls-client.log")"

	# Each stream really crossed both sidecars: the callee's counts it
	# inbound. And the mtls path really is mutual TLS: its caller's stream
	# names the callee's certified identity as its peer. (Read whole first:
	# `grep -q` would quit at the first match and fail curl mid-write.)
	for server_admin in "$plain_server_admin" "$mtls_server_admin"; do
		metrics=$(curl -fsS --max-time 5 "http://127.0.0.1:$server_admin/metrics")
		[[ $(metric "$metrics" remora_tcp_connections_total 'direction="inbound"') != 0 ]] ||
			die "mesh: the callee's sidecar (admin port $server_admin) counted no inbound stream"
	done
	metrics=$(curl -fsS --max-time 5 "http://127.0.0.1:$mtls_client_admin/metrics")
	[[ $(metric "$metrics" remora_tcp_connections_total 'direction="outbound"' \
		"service=\"$SERVICE\"" 'peer="spiffe://') != 0 ]] ||
		die "mesh-mtls: the caller's sidecar counted no stream to a spiffe:// peer:" \
			"$(grep '^remora_tcp_connections_total' <<<"$metrics")"
fi

# Targets: name, port, pids of the proxies (none for direct).
targets=("direct $redis_port -" "remora $remora_port $remora_pid")
[[ -n $with_haproxy ]] && targets+=("haproxy $haproxy_port $haproxy_pid")
if [[ $MESH == on ]]; then
	targets+=("mesh $plain_port $plain_pids" "mesh-mtls $mtls_port $mtls_pids")
fi

if ((WARMUP > 0)); then
	for t in "${targets[@]}"; do
		read -r name port _ <<<"$t"
		echo "warming up $name ($WARMUP PINGs)..." >&2
		bench_run "$work/warmup-$name.csv" ping_mbulk "$WARMUP" "$port"
	done
fi

# Each round runs every target once, in turn, so that drift in the
# machine's load touches them all alike.
for ((round = 1; round <= ROUNDS; round++)); do
	for t in "${targets[@]}"; do
		read -r name port pid <<<"$t"
		for test in "${TESTS[@]}"; do
			echo "round $round/$ROUNDS: $name $test ($REQUESTS requests)..." >&2
			out="$work/$name-$test-$round.csv"
			before=0
			[[ $pid != - ]] && before=$(cpu_ticks "$pid")
			bench_run "$out" "$test" "$REQUESTS" "$port"
			after=0
			[[ $pid != - ]] && after=$(cpu_ticks "$pid")
			# The row of the test, by its upper-case name: "rps" is the 2nd
			# field, "p50_latency_ms" the 5th.
			row=$(awk -F'","' -v t="\"${test^^}" '$1 == t { print $2, $5 }' "$out")
			read -r rps p50 <<<"$row"
			[[ ${rps:-} =~ ^[0-9.]+$ && $rps != 0.00 ]] || die "$name $test: no requests/s in $(cat "$out" "$out.err")"
			echo "$rps" >>"$work/$name-$test.rps"
			echo "$p50" >>"$work/$name-$test.p50"
			if [[ $pid != - ]]; then
				awk -v t=$((after - before)) -v n="$REQUESTS" 'BEGIN { print t * 100000 / n }' \
					>>"$work/$name-$test.cpu"
			fi
		done
	done
	for test in "${TESTS[@]}"; do
		direct_rps=$(tail -n1 "$work/direct-$test.rps")
		for t in "${targets[@]}"; do
			read -r name _ <<<"$t"
			awk -v p="$(tail -n1 "$work/$name-$test.rps")" -v d="$direct_rps" \
				'BEGIN { print p / d }' >>"$work/$name-$test.ratio"
		done
	done
done

# --- the table, in markdown ---
echo
echo "redis-benchmark -q -n $REQUESTS -c $CLIENTS -P $PIPELINE --csv, one test per run," \
	"$ROUNDS round(s), medians; $(nproc) cores; $(redis-server --version | awk '{ print $1, $3 }')"
proxies="remora-proxy --threads 1 (the default)"
[[ -n $with_haproxy ]] && proxies+=", $(haproxy -v | head -n1 | awk '{ print "HAProxy " $3 }') (nbthread 1)"
[[ $MESH == on ]] && proxies+="; mesh, mesh-mtls: two sidecars, CPU summed"
echo "$proxies; a CPU tick is 1/$(getconf CLK_TCK) s"
echo
echo "| target | test | requests/s | ratio | p50 (ms) | cpu ticks/100k |"
echo "| --- | --- | ---: | ---: | ---: | ---: |"
for t in "${targets[@]}"; do
	read -r name _ pid <<<"$t"
	for test in "${TESTS[@]}"; do
		rps=$(median <"$work/$name-$test.rps")
		ratio=$(median <"$work/$name-$test.ratio")
		p50=$(median <"$work/$name-$test.p50")
		cpu=-
		[[ $pid != - ]] && cpu=$(median <"$work/$name-$test.cpu" | awk '{ printf "%.0f", $1 }')
		printf '| %s | %s | %.0f | %.2f | %.3f | %s |\n' "$name" "${test^^}" "$rps" "$ratio" "$p50" "$cpu"
	done
done
