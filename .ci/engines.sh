#!/usr/bin/env bash
# The newer Docker engines of the test matrix, from Debian 13 packages that are never installed:
#   docker26   Docker 26.1 with overlay2: `docker save` writes the OCI-layout archive
#   docker26c  Docker 26.1 on its own containerd 1.7 with the containerd image store
#              (image ids are manifest digests there)
# Each has its own socket, data root, exec root and pidfile beside the host's engine.
#
# usage: .ci/engines.sh start    fetch if needed, start what is not running, print the
#                                DOCKER_HOST values on stdout (one line, space separated)
#        .ci/engines.sh stop     stop them (the data roots stay, for a fast next start)
#        .ci/engines.sh hosts    print the DOCKER_HOST values
#
# The .debs and their extracted tree are cached under $AIRGAP_ENGINES_CACHE, so only the first
# start downloads (~56 MB). Needs root, the docker CLI and runc (Debian 12's docker.io brings
# both). Containers on these engines must use --network host: no bridge exists.
set -euo pipefail

CACHE=${AIRGAP_ENGINES_CACHE:-/var/cache/airgap-engines}
STATE=${AIRGAP_ENGINES_STATE:-/var/lib/airgap-engines}
RUN=/run/airgap-engines # kept short: containerd puts its shims' sockets under it
SUITE=trixie
PACKAGES=(docker.io containerd)
ROOT=$CACHE/root
DOCKER26=unix:///run/airgap-docker26.sock
DOCKER26C=unix:///run/airgap-docker26c.sock
CONTAINERD26C=$RUN/containerd26c.sock

say() { echo "engines: $*" >&2; }

fetch() {
    if [[ -x $ROOT/usr/sbin/dockerd && -x $ROOT/usr/bin/containerd ]]; then
        return
    fi
    mkdir -p "$CACHE/lists/partial" "$CACHE/apt/archives/partial" "$CACHE/debs"
    if ! compgen -G "$CACHE/debs/docker.io_*.deb" >/dev/null ||
        ! compgen -G "$CACHE/debs/containerd_*.deb" >/dev/null; then
        say "downloading ${PACKAGES[*]} from Debian $SUITE into $CACHE/debs"
        echo "deb http://deb.debian.org/debian $SUITE main" >"$CACHE/sources.list"
        local apt=(-q -o "Dir::Etc::SourceList=$CACHE/sources.list"
            -o Dir::Etc::SourceParts=/dev/null -o "Dir::State::Lists=$CACHE/lists"
            -o "Dir::Cache=$CACHE/apt" -o APT::Sandbox::User=root)
        apt-get "${apt[@]}" update >&2
        (cd "$CACHE/debs" && apt-get "${apt[@]}" download "${PACKAGES[@]}" >&2)
    fi
    rm -rf "$ROOT.tmp"
    for deb in "$CACHE"/debs/docker.io_*.deb "$CACHE"/debs/containerd_*.deb; do
        dpkg-deb -x "$deb" "$ROOT.tmp"
    done
    mv "$ROOT.tmp" "$ROOT"
}

answers() { docker -H "$1" info >/dev/null 2>&1; }

wait_for() { # wait_for WHAT LOG COMMAND...: up to 60 s
    local what=$1 log=$2
    shift 2
    for _ in $(seq 1 120); do
        "$@" && return 0
        sleep 0.5
    done
    say "$what did not come up; the end of $log:"
    tail -n 30 "$log" >&2
    return 1
}

alive() { [[ -f $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

start_containerd() {
    local dir=$STATE/containerd26c pid=$RUN/containerd26c.pid
    if alive "$pid" && [[ -S $CONTAINERD26C ]]; then
        return
    fi
    mkdir -p "$dir" "$RUN"
    cat >"$dir/config.toml" <<EOF
version = 2
root = "$dir/root"
state = "$RUN/containerd26c"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "$CONTAINERD26C"
EOF
    rm -f "$CONTAINERD26C"
    PATH=$ROOT/usr/bin:$ROOT/usr/sbin:$PATH nohup "$ROOT/usr/bin/containerd" \
        --config "$dir/config.toml" >"$STATE/containerd26c.log" 2>&1 &
    echo $! >"$pid"
    wait_for containerd26c "$STATE/containerd26c.log" test -S "$CONTAINERD26C"
}

start_dockerd() { # start_dockerd NAME HOST DAEMON_JSON [DOCKERD_ARGS...]
    local name=$1 host=$2 config=$3
    shift 3
    if answers "$host"; then
        return
    fi
    mkdir -p "$STATE/$name" "$RUN"
    echo "$config" >"$STATE/$name.json"
    # Our own config file: /etc/docker/daemon.json belongs to the host's engine.
    PATH=$ROOT/usr/bin:$ROOT/usr/sbin:$PATH nohup "$ROOT/usr/sbin/dockerd" \
        --config-file "$STATE/$name.json" --host "$host" --data-root "$STATE/$name" \
        --exec-root "$RUN/$name" --pidfile "$RUN/$name.pid" \
        --bridge=none --iptables=false --ip6tables=false "$@" >"$STATE/$name.log" 2>&1 &
    wait_for "$name" "$STATE/$name.log" answers "$host"
}

stop_pid() { # stop_pid NAME PIDFILE
    local pid
    alive "$2" || return 0
    pid=$(cat "$2")
    kill "$pid"
    for _ in $(seq 1 60); do
        kill -0 "$pid" 2>/dev/null || return 0
        sleep 0.5
    done
    say "$1 ($pid) did not stop within 30 s"
    return 1
}

case ${1:-} in
start)
    fetch
    start_dockerd docker26 "$DOCKER26" '{}'
    start_containerd
    start_dockerd docker26c "$DOCKER26C" '{"features": {"containerd-snapshotter": true}}' \
        --containerd "$CONTAINERD26C"
    for host in $DOCKER26 $DOCKER26C; do
        say "$host: $(docker -H "$host" info --format \
            'Docker {{.ServerVersion}}, storage {{.Driver}}')"
    done
    echo "$DOCKER26 $DOCKER26C"
    ;;
stop)
    stop_pid docker26 "$RUN/docker26.pid"
    stop_pid docker26c "$RUN/docker26c.pid"
    stop_pid containerd26c "$RUN/containerd26c.pid"
    ;;
hosts)
    echo "$DOCKER26 $DOCKER26C"
    ;;
*)
    echo "usage: $0 start|stop|hosts" >&2
    exit 2
    ;;
esac
