#!/bin/sh
# A throw-away Ceph cluster for the RBD tests and benchmarks: one ceph-mon and one ceph-osd
# (memstore: the data lives in the OSD's memory), pool size 1, bound to 127.0.0.1, no auth,
# every file it writes (config, maps, logs, pid files, sockets) under DIR.  No ceph-mgr:
# RBD I/O needs the monitor and the OSD only.
#
#   tools/ceph-dev-cluster.sh start DIR   # prints nothing on success; DIR/ceph.conf is the
#                                         # client config (rbd -c DIR/ceph.conf ls)
#   tools/ceph-dev-cluster.sh stop DIR    # kills the daemons by their pid files and waits
#
# An `rbd` pool (8 PGs, application rbd) exists when start returns.  start fails (and stops
# whatever it started) if the cluster is not usable within CEPH_DEV_TIMEOUT seconds (30).
set -eu

usage() { echo "usage: $0 start DIR | stop DIR" >&2; exit 2; }
[ $# -eq 2 ] || usage
cmd=$1
dir=$2

pids_of() {
    for f in "$dir"/run/*.pid; do
        [ -f "$f" ] && cat "$f"
    done
    return 0
}

# Running (not gone, not a zombie waiting for this machine's init to reap it).
alive() {
    kill -0 "$1" 2>/dev/null || return 1
    state=$(sed -n 's/^State:[[:space:]]*\([A-Z]\).*/\1/p' "/proc/$1/status" 2>/dev/null)
    [ -n "$state" ] && [ "$state" != Z ]
}

stop() {
    [ -d "$dir/run" ] || return 0
    pids=$(pids_of)
    for p in $pids; do kill -TERM "$p" 2>/dev/null || true; done
    # The monitor exits at once on SIGTERM; the OSD's memstore writes its whole store out
    # to DIR on a clean unmount (seconds for a written image), which a throw-away cluster
    # does not need: whatever still runs 1 s after SIGTERM gets SIGKILL.
    n=0
    for p in $pids; do
        while alive "$p"; do
            n=$((n + 1))
            if [ $n -gt 10 ]; then kill -KILL "$p" 2>/dev/null || true; fi
            sleep 0.1
        done
    done
    rm -f "$dir"/run/*.pid "$dir"/run/*.asok
}

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

start() {
    command -v ceph-mon >/dev/null 2>&1 || { echo "ceph-mon is not installed" >&2; exit 1; }
    dir=$(mkdir -p "$dir" && cd "$dir" && pwd)
    if [ -n "$(pids_of 2>/dev/null)" ]; then echo "$dir: a cluster is already running" >&2; exit 1; fi
    mkdir -p "$dir/run" "$dir/log" "$dir/mon" "$dir/osd"
    fsid=$(cat /proc/sys/kernel/random/uuid)
    port=$(free_port)
    conf=$dir/ceph.conf
    cat >"$conf" <<EOF
[global]
fsid = $fsid
mon host = v2:127.0.0.1:$port
public addr = 127.0.0.1
ms bind msgr1 = false
auth cluster required = none
auth service required = none
auth client required = none
keyring = $dir/keyring
run dir = $dir/run
admin socket = $dir/run/\$name.asok
pid file = $dir/run/\$name.pid
log file = $dir/log/\$name.log
crash dir = $dir/log
mon data = $dir/mon/\$name
osd data = $dir/osd/\$name
osd objectstore = memstore
memstore device bytes = 1073741824
osd pool default size = 1
osd pool default min size = 1
osd pool default pg autoscale mode = off
osd crush chooseleaf type = 0
mon allow pool size one = true
mon allow pool delete = true
mon warn on pool no redundancy = false
paxos propose interval = 0.1
osd op num shards = 1
osd op num threads per shard = 2
EOF
    ceph-authtool --create-keyring "$dir/keyring" --gen-key -n mon. --cap mon 'allow *' >/dev/null
    monmaptool --create --addv a "[v2:127.0.0.1:$port]" --fsid "$fsid" "$dir/monmap" >/dev/null
    ceph-mon -c "$conf" -i a --mkfs --monmap "$dir/monmap" --keyring "$dir/keyring" \
        >>"$dir/log/setup.log" 2>&1
    ceph-mon -c "$conf" -i a >>"$dir/log/setup.log" 2>&1
    to=${CEPH_DEV_TIMEOUT:-30}
    c="timeout $to ceph -c $conf --connect-timeout $to"
    osd_uuid=$(cat /proc/sys/kernel/random/uuid)
    id=$($c osd new "$osd_uuid" 2>>"$dir/log/setup.log")
    mkdir -p "$dir/osd/osd.$id"
    ceph-osd -c "$conf" -i "$id" --mkfs --osd-uuid "$osd_uuid" >>"$dir/log/setup.log" 2>&1
    ceph-osd -c "$conf" -i "$id" >>"$dir/log/setup.log" 2>&1
    $c osd pool create rbd 8 >>"$dir/log/setup.log" 2>&1
    # rbd pool init writes the pool's rbd_info object: it returns once the PGs are active,
    # which is the moment the cluster can serve I/O.
    timeout "$to" rbd -c "$conf" pool init rbd >>"$dir/log/setup.log" 2>&1
}

case $cmd in
    start)
        # set -e stops at the first failing step; the trap then stops what was started.
        trap 'echo "ceph-dev-cluster: start failed; see $dir/log" >&2; stop' EXIT
        start
        trap - EXIT ;;
    stop) stop ;;
    *) usage ;;
esac
