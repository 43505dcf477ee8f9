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
export PATH="$PATH:/usr/sbin:/sbin"

die() {
	echo "compare.sh: $*" >&2
	exit 1
}

(($# == 2)) || die "usage: compare.sh BEFORE_BIN AFTER_BIN (two remora-proxy binaries)"
builds=(before after)
bins=("$1" "$2")
for bin in "${bins[@]}"; do
	[[ -x $bin ]] || die "$bin is not an executable"
done
[[ $REQUESTS =~ ^[1-9][0-9]*$ ]] || die "REQUESTS=$REQUESTS: want a positive integer"
[[ $ROUNDS =~ ^[1-9][0-9]*$ ]] || die "ROUNDS=$ROUNDS: want a positive integer"
for tool in nginx h2load curl; do
	command -v "$tool" >/dev/null || die "$tool is missing (Debian: nginx, nghttp2-client, curl)"
done

work=$(mktemp -d -t remora-compare.XXXXXX)
pids=()
cleanup() {
	local pid
	for pid in "${pids[@]}"; do
		kill "$pid" 2>/dev/null || true
		wait "$pid" 2>/dev/null || true
	done
	rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# A free port on 127.0.0.1, not handed out before in this run.
used_ports=()
pick_port() {
	local p i
	for ((i = 0; i < 200; i++)); do
		p=$((20000 + RANDOM % 30000))
		[[ " ${used_ports[*]} " == *" $p "* ]] && continue
		if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
			used_ports+=("$p")
			REPLY=$p
			return 0
		fi
	done
	die "found no free port on 127.0.0.1"
}

wait_ok() {
	local pid=$1 i
	shift
	for ((i = 0; i < 100; i++)); do
		kill -0 "$pid" 2>/dev/null || return 1
		curl -fsS -o /dev/null --max-time 1 "$@" 2>/dev/null && return 0
		sleep 0.1
	done
	return 1
}

# CPU ticks (utime + stime, all threads) of process $1.
cpu_ticks() {
	local stat fields
	stat=$(<"/proc/$1/stat")
	read -r -a fields <<<"${stat##*) }"
	echo $((fields[11] + fields[12]))
}

median() {
	sort -g | awk '{ a[NR] = $1 } END {
		if (NR % 2) print a[(NR + 1) / 2]
		else print (a[NR / 2] + a[NR / 2 + 1]) / 2 }'
}

pick_port
nginx_port=$REPLY
mkdir -p "$work/nginx"
cat >"$work/nginx/nginx.conf" <<EOF
worker_processes 1;
pid $work/nginx/nginx.pid;
error_log $work/nginx/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $work/nginx/body;
    proxy_temp_path $work/nginx/proxy;
    fastcgi_temp_path $work/nginx/fastcgi;
    uwsgi_temp_path $work/nginx/uwsgi;
    scgi_temp_path $work/nginx/scgi;
    keepalive_requests 100000000;
    keepalive_timeout 300s;
    server {
        listen 127.0.0.1:$nginx_port;
        location / { default_type text/plain; return 200 "hello"; }
    }
}
EOF
nginx -p "$work/nginx" -e "$work/nginx/error.log" -c "$work/nginx/nginx.conf" -g 'daemon off;' \
	>"$work/nginx/out.log" 2>&1 &
pids+=($!)
wait_ok "${pids[-1]}" "http://127.0.0.1:$nginx_port/" || die "nginx did not start"

cat >"$work/mesh.yaml" <<EOF
services:
  upstream:
    endpoints: [ { address: "127.0.0.1:$nginx_port" } ]
EOF
ports=() proxies=()
for i in 0 1; do
	pick_port
	outbound=$REPLY
	pick_port
	inbound=$REPLY
	pick_port
	admin=$REPLY
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
