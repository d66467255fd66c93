#!/bin/sh
# Installs the Debian packages the real-client tests use, only when one is missing.
# Needs root (CI runs as root); without it, says what to install and continues.
set -u
need=""
command -v fio      >/dev/null 2>&1 || need="$need fio"
command -v nbdkit   >/dev/null 2>&1 || need="$need nbdkit"
command -v nbdinfo  >/dev/null 2>&1 || need="$need libnbd-bin"
command -v qemu-img >/dev/null 2>&1 || need="$need qemu-utils"
command -v nbd-client >/dev/null 2>&1 || need="$need nbd-client"
# iSCSI: libiscsi's initiator tools and compliance suite, tgtd (the benchmark's peer target),
# and QEMU's iscsi:// block driver.
command -v iscsi-test-cu >/dev/null 2>&1 || need="$need libiscsi-bin"
command -v tgtd     >/dev/null 2>&1 || need="$need tgt"
ls /usr/lib/*/qemu/block-iscsi.so >/dev/null 2>&1 || need="$need qemu-block-extra"
# Ceph: a one-monitor one-OSD dev cluster (tools/ceph-dev-cluster.sh) and the client
# libraries the rbd bdev binds (librbd1, librados2 come with ceph-common).
command -v ceph-mon >/dev/null 2>&1 || need="$need ceph-mon"
command -v ceph-osd >/dev/null 2>&1 || need="$need ceph-osd"
command -v rbd      >/dev/null 2>&1 || need="$need ceph-common"
[ -z "$need" ] && exit 0
if [ "$(id -u)" != 0 ]; then
    echo "install-sysdeps: not root; please install:$need" >&2
    exit 0
fi
echo "install-sysdeps: installing$need"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null && apt-get install -y -qq $need >/dev/null
