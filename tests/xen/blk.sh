# dom0 scenario: our blkback serves PV guests' disks (the kernel's xen-blkback is not loaded).
. /etc/harness-lib.sh
start_blkback() {
    RUST_LOG=$(sed -n "s/.*blklog=\([^ ]*\).*/\1/p" /proc/cmdline) blkback --platform xen >> /var/log/blkback.log 2>&1 &
    echo $! > /run/blkback.pid
}
# finish NAME: wait for the guest to power off, re-emit its checks.
finish() {
    t=0
    while xl domid "$1" >/dev/null 2>&1 && [ $t -lt 600 ]; do sleep 0.5; t=$((t + 1)); done
    xl domid "$1" >/dev/null 2>&1 && { ts "$1 still running: destroying"; xl destroy "$1"; }
    console "$1" | grep -a -E "GUEST-|features:|queues:|blkfront|resize|cdrom:" | sed 's/^/  guest: /'
    console "$1" | sed -n 's/.*GUEST-CHECK \([a-z-]*\) \([a-z]*\).*/CHECK \1 \2/p'
}

for d in io long idle; do dd if=/dev/zero of=/tmp/disk-$d.img bs=1M count=64 2>/dev/null; done
# A CD-ROM medium for guest-io (devtype=cdrom): 4 MiB that starts with a known line.
{ echo "XEN-DD-CDROM"; dd if=/dev/zero bs=1M count=4 2>/dev/null; } | dd of=/tmp/cd-io.img bs=1M count=4 iflag=fullblock 2>/dev/null
start_blkback
ts "blkback started"

diagnose() {
    echo "--- diagnostics"
    xl list
    xenstore-ls -f /local/domain | grep -E "backend|device" | head -60
    ps | grep -v "\[" | head -30
    tail -60 /var/log/blkback.log
    for t in /proc/$(cat /run/blkback.pid)/task/*; do echo "$(cat $t/comm) $(cat $t/wchan) $(cat $t/stat | cut -d' ' -f3)"; done
    tail -20 /var/log/xen/xen-hotplug.log 2>/dev/null
    for g in io long idle; do console guest-$g | tail -20; done
}
if timeout 120 xl create /etc/xen/cfg/guest-io.cfg; then
    # Grow the disk under the running guest (as a toolstack's online VDI resize does).
    if wait_console guest-io RESIZE-READY 300; then
        # libxl wrote device-type=cdrom for xvdc; blkback announces VDISK_CDROM|VDISK_READONLY.
        info=$(xenstore-read "/local/domain/0/backend/vbd/$(xl domid guest-io)/51744/info" 2>/dev/null)
        echo "cdrom backend info: ${info:-none}"
        [ "$info" = 5 ] && echo "CHECK cdrom-info ok" || echo "CHECK cdrom-info failed"
        dd if=/dev/zero of=/tmp/disk-io.img bs=1M count=0 seek=96 2>/dev/null
        ts "disk-io.img grown to 96 MiB"
    fi
    finish guest-io
else
    diagnose
fi

timeout 120 xl create /etc/xen/cfg/guest-long.cfg || diagnose
if wait_console guest-long LONG-START 300; then
    sleep 3
    kill -9 "$(cat /run/blkback.pid)"
    ts "blkback killed during I/O"
    sleep 1
    start_blkback
    ts "blkback restarted"
fi
finish guest-long

timeout 120 xl create /etc/xen/cfg/guest-idle.cfg || diagnose
if wait_console guest-idle IDLE-READY 300; then
    if xl block-detach guest-idle xvda; then
        [ -z "$(xl block-list guest-idle | awk 'NR > 1')" ] && detached=ok || detached=failed
    else
        detached=failed
    fi
fi
finish guest-idle
console guest-idle | grep -q "GUEST-CHECK guest-detached ok" && [ "${detached:-failed}" = ok ] \
    && echo "CHECK block-detach ok" || echo "CHECK block-detach failed"
echo "--- hotplug log"
tail -30 /var/log/xen/xen-hotplug.log 2>/dev/null
xenstore-ls -f /local/domain/0/backend 2>/dev/null | head -40
echo "--- blkback log"
cat /var/log/blkback.log | tail -40
