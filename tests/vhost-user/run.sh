#!/usr/bin/env bash
# The vhost-user harness: blkback-vhost-user (under storage-dd) serves two disks (one read-write with two queues,
# one read-only) to QEMU's vhost-user-blk-pci devices, and Debian's Linux 6.1 booted in that VM
# (software emulation; no Xen) drives them with its unmodified virtio-blk driver. The guest
# checks what it sees and does; the host then checks the disk file against what the guest
# wrote; a second boot against the same backend processes reads it back, and while it runs the
# read-write backend is SIGKILLed: storage-dd starts it again and QEMU reconnects.
#
#   tests/vhost-user/run.sh
#
# Work files go to target/vhost-user-harness/; Debian's kernel comes from the real-Xen
# harness's download (tests/xen/fetch.sh into target/xen-harness/, kept between runs).
# BLKBACK_LOG sets the backend's RUST_LOG. Verdict lines start with "CHECK".
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/../.." && pwd)
harness=$top/tests/xen
work=${XEN_HARNESS_DIR:-$top/target/xen-harness}
out=$top/target/vhost-user-harness
mkdir -p "$work" "$out"

need=()
for tool in qemu-system-x86_64:qemu-system-x86 cpio:cpio; do
    command -v "${tool%%:*}" >/dev/null 2>&1 || need+=("${tool##*:}")
done
if [ "${#need[@]}" -gt 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${need[@]}"
fi
"$harness/fetch.sh" "$work"
(cd "$top" && cargo build --locked -p blkback --bin blkback-vhost-user -p storage-dd --bin storage-dd)
backend=$top/target/debug/blkback-vhost-user
supervisor=$top/target/debug/storage-dd

# The guest image: busybox, virtio-pci and virtio-blk, the checks as /init.
cd "$work"
version=$(ls x/lib/modules | head -1)
xlib=$work/x/usr/lib/x86_64-linux-gnu
. "$harness/image-lib.sh"
base "$out/guest" "$here/init"
copy_modules "$out/guest" virtio_pci virtio_blk
pack "$out/guest" "$out/guest.cpio.gz"

# The disks: 64 MiB with 4 MiB of host data at the start, and a small read-only one.
cd "$out"
rm -f disk.img ro.img ./*.sock
dd if=/dev/urandom of=disk.img bs=1M count=4 status=none
truncate -s 64M disk.img
truncate -s 8M ro.img
hostsum=$(head -c 4M disk.img | sha256sum | cut -d' ' -f1)

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT
# start_backend NAME ARGS...: one blkback-vhost-user on $out/NAME.sock under storage-dd (which
# restarts it when it dies; its health file is $out/NAME-dd/health.json); the supervisor's pid
# in $started.
start_backend() {
    local name=$1; shift
    rm -rf "$out/$name.sock" "$out/$name-dd"
    RUST_LOG=${BLKBACK_LOG:-info} "$supervisor" --backend "$backend" --run-dir "$out/$name-dd" -- \
        --socket "$out/$name.sock" "$@" >>"$out/backend-$name.log" 2>&1 &
    started=$!
    pids+=("$started")
    local t=0
    while [ ! -S "$out/$name.sock" ] && [ $t -lt 100 ]; do sleep 0.1; t=$((t + 1)); done
}
# backend_pid NAME: the pid of the backend storage-dd runs for NAME, from its health file.
backend_pid() {
    python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["pid"])' "$out/$1-dd/health.json"
}
restarts() {
    python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["restarts"])' "$out/$1-dd/health.json"
}
rm -f "$out"/backend-*.log "$out"/guest-*.log
start_backend rw --disk "$out/disk.img" --queues 2 --serial vhost-harness
rw_pid=$started
start_backend ro --disk "$out/ro.img" --read-only
ro_pid=$started

# boot N APPEND...: one VM run; its console goes to guest-N.log. QEMU reconnects to a
# restarted backend (reconnect=1).
boot() {
    local n=$1; shift
    local start=$(date +%s)
    timeout "${VHOST_HARNESS_TIMEOUT:-300}" qemu-system-x86_64 \
        -accel tcg,thread=multi -cpu max -smp 2 -m 512 \
        -object memory-backend-memfd,id=mem,size=512M,share=on -M pc,memory-backend=mem \
        -chardev socket,id=rw,path="$out/rw.sock",reconnect=1 -device vhost-user-blk-pci,chardev=rw,num-queues=2 \
        -chardev socket,id=ro,path="$out/ro.sock" -device vhost-user-blk-pci,chardev=ro,num-queues=1 \
        -display none -no-reboot -serial stdio -kernel "$work/vmlinuz" -initrd "$out/guest.cpio.gz" \
        -append "console=ttyS0 panic=-1 boot=$n $*" </dev/null >"$out/guest-$n.log" 2>&1 || true
    echo "boot $n: QEMU ran $(( $(date +%s) - start )) s"
    grep -a -E "GUEST-|vda:|vdb:|discard|virtio_blk|vhost" "$out/guest-$n.log" || true
}
verdicts=""
host_check() { echo "HOST-CHECK $1 $2"; verdicts="$verdicts
HOST-CHECK $1 $2"; }

boot 1 "hostsum=$hostsum"
guestsum=$(grep -a -o "GUEST-SHA [0-9a-f]*" "$out/guest-1.log" | awk '{print $2}' | tail -1)
# The host reads what the guest wrote at 16 MiB, after the VM is gone.
filesum=$(dd if=disk.img bs=1M skip=16 count=8 status=none | sha256sum | cut -d' ' -f1)
[ -n "$guestsum" ] && [ "$filesum" = "$guestsum" ] && v=ok || v=failed
host_check vhost-host-file-matches $v
kill -0 "$rw_pid" 2>/dev/null && kill -0 "$ro_pid" 2>/dev/null && v=ok || v=failed
host_check vhost-backends-outlive-the-vm $v

# The second VM; while it idles, SIGKILL the read-write backend: its supervisor starts it again.
boot 2 "guestsum=${guestsum:-none}" &
vm=$!
t=0
while ! grep -a -q GUEST-RESTART-NOW "$out/guest-2.log" 2>/dev/null && [ $t -lt 1200 ]; do sleep 0.1; t=$((t + 1)); done
if grep -a -q GUEST-RESTART-NOW "$out/guest-2.log"; then
    victim=$(backend_pid rw)
    kill -9 "$victim"
    echo "killed the read-write backend (pid $victim) with SIGKILL; storage-dd starts it again"
fi
wait "$vm"
[ "$(restarts rw)" = 1 ] && [ "$(backend_pid rw)" != "${victim:-}" ] && v=ok || v=failed
host_check vhost-supervisor-restarted $v

checks="vhost-sees-vda-vdb vhost-size vhost-serial vhost-multi-queue vhost-reads-host-data
    vhost-odirect-checksum vhost-flush-heavy vhost-discard vhost-read-only vhost-host-file-matches
    vhost-backends-outlive-the-vm vhost-second-boot-reads-back vhost-restart-reads-back
    vhost-restart-writes vhost-supervisor-restarted"
all=$(cat "$out"/guest-1.log "$out"/guest-2.log; echo "$verdicts")
passed=0 total=0
for c in $checks; do
    total=$((total + 1))
    # (a here-string, not a pipe: grep -q stops reading early, which pipefail counts as a failure)
    if grep -a -q -E "CHECK $c ok" <<<"$all"; then
        echo "CHECK $c ok"; passed=$((passed + 1))
    else
        echo "CHECK $c FAILED"
    fi
done
echo "vhost-user harness: $passed/$total checks passed"
if [ "$passed" != "$total" ]; then
    echo "--- backend logs"; tail -n 20 "$out"/backend-*.log
    exit 1
fi
