#!/usr/bin/env bash
# A throwaway Ceph cluster for tests and the demo, on 127.0.0.1 only, with no containers:
# one monitor, one manager and NOSDS (default 2) BlueStore OSDs over sparse files, cephx,
# and a pool "rbd" with size 2 / min_size 1.  Everything (conf, keyrings, data, logs,
# pid files, admin sockets) lives under DIR.
#
#   ceph-dev.sh start DIR        boot it; prints the time to HEALTH_OK and the daemons' memory
#   ceph-dev.sh stop DIR         kill every daemon it started; nothing is left running
#   ceph-dev.sh status DIR       daemons, their memory, and 'ceph -s'
#   ceph-dev.sh memory DIR       daemons and their memory (resident)
#   ceph-dev.sh osd-stop DIR N   stop osd.N (SIGTERM: it tells the monitor it is going)
#   ceph-dev.sh osd-kill DIR N   kill osd.N (SIGKILL: a crash, found by its peers)
#   ceph-dev.sh osd-start DIR N  start osd.N again
#
# CEPH_DEV_OWNER_PID=PID with start: stop the cluster by itself once PID has exited.
# Clients: ceph -c DIR/ceph.conf ..., rbd -c DIR/ceph.conf ... (the conf names DIR/keyring).
# The settings below are measured for Debian's ceph 16.2.15 on a 2-core machine.
set -euo pipefail

NOSDS=${CEPH_DEV_OSDS:-2}
OSD_SIZE=${CEPH_DEV_OSD_SIZE:-4G}   # sparse: only what is written takes disk
HEALTH_TIMEOUT=${CEPH_DEV_TIMEOUT:-60}
# osd_memory_target does nothing without tcmalloc: bound glibc's arenas instead.
export MALLOC_ARENA_MAX=2

die() { echo "ceph-dev: $*" >&2; exit 2; }
usage() { die "usage: $0 start|stop|status|memory DIR | osd-stop|osd-kill|osd-start DIR N"; }

[ $# -ge 2 ] || usage
cmd=$1
mkdir -p "$2"
DIR=$(cd "$2" && pwd)
CONF=$DIR/ceph.conf
RUN=$DIR/run

ceph_() { timeout 60 ceph -c "$CONF" "$@"; }
authtool() { ceph-authtool "$@" >/dev/null; }

now_ms() { date +%s%3N; }
# CEPH_DEV_VERBOSE=1: the time of each start-up step, to stderr.
step() { [ -z "${CEPH_DEV_VERBOSE:-}" ] || echo "ceph-dev: $1 at $(($(now_ms) - t0)) ms" >&2; }

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

write_conf() {
    local fsid=$1 port=$2
    cat >"$CONF" <<EOF
[global]
fsid = $fsid
mon_host = v2:127.0.0.1:$port
public_addr = 127.0.0.1
cluster_addr = 127.0.0.1
ms_bind_msgr1 = false
auth_cluster_required = cephx
auth_service_required = cephx
auth_client_required = cephx
auth_allow_insecure_global_id_reclaim = false
keyring = $DIR/keyring
run_dir = $RUN
admin_socket = $RUN/\$name.asok
log_file = $DIR/log/\$name.log
pid_file = $RUN/\$name.pid
crash_dir = $DIR/crash
exec_dir = $RUN
# One host: replicas go to different OSDs, not hosts (needed before the monitor's mkfs).
osd_crush_chooseleaf_type = 0
osd_pool_default_size = 2
osd_pool_default_min_size = 1
osd_pool_default_pg_num = 8
osd_pool_default_pgp_num = 8
osd_pool_default_pg_autoscale_mode = off
# With two OSDs a hung one is otherwise not marked down for up to 900 s.
mon_osd_min_down_reporters = 1
# This disk is shared and mostly full as the monitor counts it.
mon_data_avail_warn = 2
mon_data_avail_crit = 1
mon_allow_pool_delete = true
mon_warn_on_pool_no_app = false
# Fast start-up: a proposal every 100 ms instead of every second.
paxos_propose_interval = 0.1
paxos_min_wait = 0.05
mon_rocksdb_options = write_buffer_size=4194304,max_write_buffer_number=2,compression=kNoCompression
ms_async_op_threads = 2

[mon]
mon_data = $DIR/\$name
mon_initial_members = a

[mgr]
mgr_data = $DIR/\$name
keyring = $DIR/\$name/keyring
mgr_initial_modules = 

[osd]
osd_data = $DIR/\$name
keyring = $DIR/\$name/keyring
osd_objectstore = bluestore
bluestore_block_create = true
bluestore_block_size = $(numfmt --from=iec "$OSD_SIZE")
bluestore_fsck_on_mkfs = false
bluestore_fsck_on_mount = false
bluestore_cache_autotune = false
bluestore_cache_size = 67108864
bluestore_rocksdb_options = compression=kNoCompression,max_write_buffer_number=2,min_write_buffer_number_to_merge=1,recycle_log_file_num=2,write_buffer_size=4194304,writable_file_max_buffer_size=0,compaction_readahead_size=2097152
osd_op_num_shards = 2
osd_op_num_threads_per_shard = 1
osd_max_backfills = 4
osd_recovery_sleep = 0
osd_heartbeat_interval = 2
osd_heartbeat_grace = 10
# A new PG interval serves reads only after the old one's lease (ratio x grace) has run out:
# 1 s instead of 16 s, at start-up and after an OSD dies.
osd_pool_default_read_lease_ratio = 0.1

[client]
# A client gives up on an unreachable monitor after 30 s, not 300 s.
client_mount_timeout = 30
# An op waiting for a PG to get an OSD asks for new maps every second, not every 5 s.
objecter_tick_interval = 1
# Each client its own admin socket and log, or concurrent rbd/ceph commands collide.
admin_socket = $RUN/\$name.\$pid.\$cctid.asok
log_file = $DIR/log/\$name.\$pid.log
EOF
}

# Start a daemon in the foreground of its own session; its pid goes to RUN/NAME.pid.
spawn() {
    local name=$1
    shift
    setsid "$@" -f -c "$CONF" </dev/null >>"$DIR/log/$name.out" 2>&1 &
    echo $! >"$RUN/$name.pid"
}

alive() { # pid file -> pid, if that process is still ours
    local f=$1 pid
    [ -f "$f" ] || return 1
    pid=$(cat "$f")
    [ -n "$pid" ] && [ -d "/proc/$pid" ] && tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null \
        | grep -qF -- "$CONF" && echo "$pid"
}

stop_pids() { # signal, then pid files
    local sig=$1 pids=() f pid
    shift
    for f in "$@"; do
        pid=$(alive "$f") && pids+=("$pid")
    done
    [ ${#pids[@]} -eq 0 ] && return 0
    kill "-$sig" "${pids[@]}" 2>/dev/null || true
    local tick left
    for tick in $(seq 100); do # 5 s to go, then SIGKILL
        left=()
        for pid in "${pids[@]}"; do [ -d "/proc/$pid" ] && left+=("$pid"); done
        [ ${#left[@]} -eq 0 ] && break
        [ "$tick" -eq 50 ] && { kill -KILL "${left[@]}" 2>/dev/null || true; }
        sleep 0.1
    done
    for f in "$@"; do alive "$f" >/dev/null || rm -f "$f"; done
}

memory() { # the daemons' resident memory
    local total=0 f pid rss
    for f in "$RUN"/*.pid; do
        pid=$(alive "$f") || continue
        rss=$(awk '/^VmRSS/ {print $2}' "/proc/$pid/status")
        printf '  %-8s pid %-7s %6d MiB\n' "$(basename "$f" .pid)" "$pid" $((rss / 1024))
        total=$((total + rss))
    done
    printf '  total %d MiB\n' $((total / 1024))
}

# HEALTH_OK alone can come from stale PG stats: also every PG of every pool active+clean.
settled() {
    ceph_ status -f json 2>/dev/null | python3 -c '
import json, sys
s = json.load(sys.stdin)
pg = s["pgmap"]
clean = sum(x["count"] for x in pg.get("pgs_by_state", []) if x["state_name"] == "active+clean")
ok = s["health"]["status"] == "HEALTH_OK" and pg["num_pgs"] > 0 and clean == pg["num_pgs"]
sys.exit(0 if ok else 1)'
}

wait_health_ok() {
    local deadline=$(($(now_ms) + HEALTH_TIMEOUT * 1000))
    while [ "$(now_ms)" -lt "$deadline" ]; do
        settled && return 0
        sleep 0.2
    done
    echo "ceph-dev: not HEALTH_OK with every PG active+clean after ${HEALTH_TIMEOUT}s:" >&2
    ceph_ health detail >&2 || true
    return 1
}

start() {
    local t0 fsid port keys=() i uuid
    t0=$(now_ms)
    for f in "$RUN"/*.pid; do
        [ -e "$f" ] && alive "$f" >/dev/null && die "a cluster already runs in $DIR (stop it first)"
    done
    rm -rf "${DIR:?}"/{mon.a,mgr.x,osd.*,log,run,crash} "$DIR"/*.keyring "$DIR"/keyring "$DIR"/monmap
    mkdir -p "$DIR/log" "$RUN" "$DIR/crash" "$DIR/mon.a" "$DIR/mgr.x"
    fsid=$(uuidgen)
    port=$(free_port)
    write_conf "$fsid" "$port"

    # Every key is in the monitor's keyring before its mkfs, so no 'ceph auth' round trips.
    authtool --create-keyring "$DIR/mon.keyring" --gen-key -n mon. --cap mon 'allow *'
    authtool --create-keyring "$DIR/keyring" --gen-key -n client.admin \
        --cap mon 'allow *' --cap osd 'allow *' --cap mgr 'allow *' --cap mds 'allow *'
    authtool --create-keyring "$DIR/mgr.x/keyring" --gen-key -n mgr.x \
        --cap mon 'allow profile mgr' --cap osd 'allow *' --cap mds 'allow *'
    keys=("$DIR/keyring" "$DIR/mgr.x/keyring")
    for i in $(seq 0 $((NOSDS - 1))); do
        mkdir -p "$DIR/osd.$i"
        authtool --create-keyring "$DIR/osd.$i/keyring" --gen-key -n "osd.$i" \
            --cap mon 'allow profile osd' --cap osd 'allow *' --cap mgr 'allow profile osd'
        keys+=("$DIR/osd.$i/keyring")
    done
    for k in "${keys[@]}"; do authtool "$DIR/mon.keyring" --import-keyring "$k"; done

    monmaptool --create --fsid "$fsid" --addv a "[v2:127.0.0.1:$port]" "$DIR/monmap" >/dev/null
    ceph-mon -c "$CONF" --mkfs -i a --monmap "$DIR/monmap" --keyring "$DIR/mon.keyring"
    spawn mon.a ceph-mon -i a
    spawn mgr.x ceph-mgr -i x
    step "monitor and manager started"

    # The OSDs into the OSD map and the pool, in one client; then mkfs and boot in parallel.
    local cmds="osd pool create rbd 8 8"$'\n'
    for i in $(seq 0 $((NOSDS - 1))); do
        uuid=$(uuidgen)
        echo "$uuid" >"$DIR/osd.$i/uuid"
        cmds+="osd new $uuid $i"$'\n'
    done
    printf '%s' "$cmds" | ceph_ >/dev/null 2>&1 || { stop; die "cannot create the OSDs and the pool"; }
    step "OSDs in the map"
    local boots=()
    for i in $(seq 0 $((NOSDS - 1))); do
        (
            ceph-osd -c "$CONF" -i "$i" --mkfs --osd-uuid "$(cat "$DIR/osd.$i/uuid")" \
                >>"$DIR/log/osd.$i.out" 2>&1 || { echo "ceph-dev: osd.$i mkfs failed" >&2; exit 1; }
            spawn "osd.$i" ceph-osd -i "$i"
        ) &
        boots+=($!)
    done
    wait "${boots[@]}" || true # not a bare wait: the daemons are our children too
    step "OSDs started"
    # This waits for the pool's PGs to go active.
    if ! timeout "$HEALTH_TIMEOUT" rbd -c "$CONF" pool init rbd; then
        for f in "$RUN"/*.pid; do
            alive "$f" >/dev/null || echo "ceph-dev: $(basename "$f" .pid) died: see $DIR/log" >&2
        done
        stop
        die "pool init failed"
    fi
    step "pool rbd ready"
    wait_health_ok || { stop; exit 1; }
    echo "ceph-dev: HEALTH_OK in $(( ($(now_ms) - t0) )) ms; conf $CONF"
    memory
    [ -z "${CEPH_DEV_OWNER_PID:-}" ] || watch_owner "$CEPH_DEV_OWNER_PID"
}

# Stop the cluster once process $1 is gone (a test run that died without stopping it).
# The watchdog's command line names the conf, so 'stop' kills it like a daemon; once it
# runs 'stop' itself it no longer does.
watch_owner() {
    setsid bash -c 'while kill -0 "$1" 2>/dev/null; do sleep 1; done; exec bash "$2" stop "$3"' \
        ceph-dev-watchdog "$1" "$(readlink -f "$0")" "$DIR" "$CONF" </dev/null >>"$DIR/log/watchdog.out" 2>&1 &
    echo $! >"$RUN/watchdog.pid"
}

stop() {
    stop_pids TERM "$RUN"/watchdog.pid
    stop_pids TERM "$RUN"/osd.*.pid "$RUN"/mgr.*.pid
    stop_pids TERM "$RUN"/mon.*.pid
    rm -f "$RUN"/*.asok
}

osd_pid_file() {
    [[ ${1:-} =~ ^[0-9]+$ ]] || usage
    [ -d "$DIR/osd.$1" ] || die "no osd.$1 in $DIR"
    echo "$RUN/osd.$1.pid"
}

case $cmd in
start) start ;;
stop) stop ;;
memory) memory ;;
status)
    memory
    ceph_ -s
    ;;
osd-stop) stop_pids TERM "$(osd_pid_file "${3:-}")" ;;
osd-kill) stop_pids KILL "$(osd_pid_file "${3:-}")" ;;
osd-start)
    f=$(osd_pid_file "${3:-}")
    alive "$f" >/dev/null && die "osd.$3 already runs"
    spawn "osd.$3" ceph-osd -i "$3"
    ;;
*) usage ;;
esac
