# What the load scripts share: processes they start and end, free ports,
# readiness, CPU ticks, medians, and the nginx upstream. Sourced, not run;
# the script sets SCRIPT (its name, for errors) first.

export PATH="$PATH:/usr/sbin:/sbin"

die() {
	echo "$SCRIPT: $*" >&2
	exit 1
}

work=$(mktemp -d -t "remora-${SCRIPT%.sh}.XXXXXX")
pids=()

# Ends a process started here: TERM, then KILL if it is still there after 5s.
stop() {
	local pid=$1 i
	kill "$pid" 2>/dev/null || return 0
	for ((i = 0; i < 50; i++)); do
		kill -0 "$pid" 2>/dev/null || break
		sleep 0.1
	done
	kill -KILL "$pid" 2>/dev/null || true
	wait "$pid" 2>/dev/null || true
}

cleanup() {
	local pid
	for pid in "${pids[@]}"; do
		stop "$pid"
	done
	rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Installs Debian package $2 when command $1 is missing. Fails if it cannot.
ensure() {
	command -v "$1" >/dev/null 2>&1 && return 0
	local sudo=()
	[[ $(id -u) -eq 0 ]] || sudo=(sudo)
	echo "installing $2 (apt-get)..." >&2
	"${sudo[@]}" apt-get update -qq >/dev/null &&
		DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq "$2" >/dev/null &&
		command -v "$1" >/dev/null 2>&1
}

used_ports=()
# Sets REPLY to a loopback port nothing listens on and not handed out before.
pick_port() {
	local p i
	for ((i = 0; i < 200; i++)); do
		# Below the ephemeral range (32768 up), where the many client
		# connections of a run take their local ports.
		p=$((10000 + RANDOM % 22000))
		[[ " ${used_ports[*]} " == *" $p "* ]] && continue
		if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
			used_ports+=("$p")
			REPLY=$p
			return 0
		fi
	done
	die "found no free port on 127.0.0.1"
}

# proxy_ports: free ports for a proxy's three listeners, in the caller's
# outbound, inbound and admin variables.
proxy_ports() {
	pick_port
	outbound=$REPLY
	pick_port
	inbound=$REPLY
	pick_port
	admin=$REPLY
}

# Waits (10s at most) until `curl ARGS...` succeeds while process $1 lives.
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

# CPU ticks of the processes in $1 (pids joined by commas), all threads.
cpu_ticks() {
	local stat fields pid total=0
	for pid in ${1//,/ }; do
		stat=$(<"/proc/$pid/stat")
		# Past the command name, which may hold spaces: field 3 (state) is first.
		read -r -a fields <<<"${stat##*) }"
		total=$((total + fields[11] + fields[12])) # utime + stime
	done
	echo "$total"
}

median() {
	sort -g | awk '{ a[NR] = $1 } END {
		if (NR == 0) print "nan"
		else if (NR % 2) print a[(NR + 1) / 2]
		else print (a[NR / 2] + a[NR / 2 + 1]) / 2 }'
}

# Starts nginx (one worker, no access log) on a free port of 127.0.0.1,
# answering every request `200` with body $1; sets nginx_port.
start_nginx() {
	pick_port
	nginx_port=$REPLY
	mkdir -p "$work/nginx"
	cat >"$work/nginx/nginx.conf" <<NGINX
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
    # The proxies keep their connections to nginx: never close them for
    # having served many requests, which would add reconnects to their side.
    keepalive_requests 100000000;
    keepalive_timeout 300s;
    server {
        listen 127.0.0.1:$nginx_port;
        location / {
            default_type text/plain;
            return 200 "$1";
        }
    }
}
NGINX
	nginx -p "$work/nginx" -e "$work/nginx/error.log" -c "$work/nginx/nginx.conf" -g 'daemon off;' \
		>"$work/nginx/out.log" 2>&1 &
	pids+=($!)
	wait_ok "${pids[-1]}" "http://127.0.0.1:$nginx_port/" ||
		die "nginx did not start: $(cat "$work/nginx/error.log" "$work/nginx/out.log" 2>/dev/null)"
}

# --- a mesh of sidecars on control planes, for the two-sidecar paths ---

# mesh_tokens WHO...: a random bearer token for each identity, in
# $work/mesh/WHO.token, and $work/mesh/tokens.yaml granting each.
mesh_tokens() {
	local who
	mkdir -p "$work/mesh"
	: >"$work/mesh/tokens.yaml"
	for who in "$@"; do
		head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$work/mesh/$who.token"
		echo "$who: $(sha256sum <"$work/mesh/$who.token" | cut -c1-64)" >>"$work/mesh/tokens.yaml"
	done
}

# start_control NAME MESH_FILE ARGS...: starts a control plane (the
# script's $control_bin) serving MESH_FILE; its API port in REPLY.
start_control() {
	local name=$1 file=$2 api admin
	shift 2
	pick_port
	api=$REPLY
	pick_port
	admin=$REPLY
	"$control_bin" serve --config "$file" --api "127.0.0.1:$api" \
		--admin "127.0.0.1:$admin" --log-level warn "$@" >"$work/mesh/$name.log" 2>&1 &
	pids+=($!)
	wait_ok "${pids[-1]}" "http://127.0.0.1:$admin/ready" ||
		die "remora-control ($name) did not become ready: $(cat "$work/mesh/$name.log")"
	REPLY=$api
}

# start_sidecar NAME CONTROL SERVICE APP TOKEN [ARGS...]: starts a sidecar
# (the script's $proxy_bin) of SERVICE in front of APP, on the control
# plane at URL CONTROL, with the identity $work/mesh/TOKEN.token grants
# (`-`: none) and ARGS; its outbound port in REPLY, its pid in sidecar_pid,
# its admin port in sidecar_admin. It registers, and so turns ready, once
# APP accepts connections: a caller's app is the benchmark's server too,
# which it never calls.
start_sidecar() {
	local name=$1 control=$2 service=$3 app=$4 token=$5 outbound inbound admin identity=()
	shift 5
	proxy_ports
	[[ $token != - ]] && identity=(--token-file "$work/mesh/$token.token" --trust-anchors "$work/mesh/ca/ca.crt")
	"$proxy_bin" --control-url "$control" --service "$service" \
		--app "$app" --outbound "127.0.0.1:$outbound" --inbound "127.0.0.1:$inbound" \
		--advertise "127.0.0.1:$inbound" --admin "127.0.0.1:$admin" "${identity[@]}" "$@" \
		--log-level warn --drain-timeout 1s >"$work/mesh/$name.log" 2>&1 &
	sidecar_pid=$!
	pids+=("$sidecar_pid")
	wait_ok "$sidecar_pid" "http://127.0.0.1:$admin/ready" ||
		die "the $name sidecar did not become ready: $(cat "$work/mesh/$name.log")"
	sidecar_admin=$admin
	REPLY=$outbound
}

# --- what the side-by-side benchmarks (run.sh, tcp.sh) set up alike ---

# Reads HAPROXY (auto, on, off) and MESH (on, off); sets with_haproxy when
# HAProxy is to be measured, installing it where it may.
peer_settings() {
	with_haproxy=
	case $HAPROXY in
	off) ;;
	on) ensure haproxy haproxy || die "HAProxy is missing and could not be installed"; with_haproxy=1 ;;
	auto) if ensure haproxy haproxy; then with_haproxy=1; else echo "HAProxy not available: skipped" >&2; fi ;;
	*) die "HAPROXY=$HAPROXY: want auto, on or off" ;;
	esac
	case $MESH in on | off) ;; *) die "MESH=$MESH: want on or off" ;; esac
}

# Builds the release binaries unless NO_BUILD is set, and sets proxy_bin
# and control_bin (the latter needed only with MESH=on).
release_binaries() {
	if [[ -z $NO_BUILD ]]; then
		echo "building remora-proxy and remora-control (release)..." >&2
		(cd "$root" && cargo build --release -p remora-proxy -p remora-control) >&2
	fi
	proxy_bin="${CARGO_TARGET_DIR:-$root/target}/release/remora-proxy"
	control_bin="${CARGO_TARGET_DIR:-$root/target}/release/remora-control"
	[[ -x $proxy_bin ]] || die "$proxy_bin is missing: build it or unset NO_BUILD"
	[[ $MESH == off || -x $control_bin ]] || die "$control_bin is missing: build it, unset NO_BUILD or set MESH=off"
}
