# dom0 scenario: our netback serves a PV guest's NIC (the kernel's xen-netback is not loaded).
# The guest's unmodified xen-netfront gets its address by DHCP across the bridge, pings, moves
# checksummed data both ways, keeps its transfer through a netback SIGKILL and restart, and is
# hot-unplugged with xl network-detach.
. /etc/harness-lib.sh
guest_value() { console guest-net | sed -n "s/.*$1 \([0-9a-f]*\).*/\1/p" | tail -1; }
start_netback() {
    RUST_LOG=$(sed -n "s/.*netlog=\([^ ]*\).*/\1/p" /proc/cmdline) \
        netback --platform xen --stats-file /run/netback-stats.json >> /var/log/netback.log 2>&1 &
    echo $! > /run/netback.pid
}
# serve PORT SCRIPT: one connection, the script gets the socket as stdin/stdout.
serve() { nc -l -p "$1" -e "$2" & }

ts "net scenario"
brctl addbr xenbr0
ip addr add 10.99.0.1/24 dev xenbr0
ip link set xenbr0 up
printf 'start 10.99.0.10\nend 10.99.0.20\ninterface xenbr0\nlease_file /tmp/udhcpd.leases\noption subnet 255.255.255.0\n' > /etc/udhcpd.conf
touch /tmp/udhcpd.leases
udhcpd /etc/udhcpd.conf
printf '#!/bin/sh\ncat > /tmp/up\n' > /tmp/recv-up.sh
printf '#!/bin/sh\ncat /tmp/down\n' > /tmp/send-down.sh
printf '#!/bin/sh\ncat > /tmp/up2\n' > /tmp/recv-up2.sh
chmod +x /tmp/*.sh
dd if=/dev/urandom of=/tmp/down bs=1M count=8 2>/dev/null
serve 5001 /tmp/recv-up.sh
serve 5002 /tmp/send-down.sh
start_netback
ts "netback started"
net_diagnose() {
    echo "--- net diagnostics"
    xl list
    xenstore-ls -f /local/domain | grep -E "backend/vif|device/vif" | head -60
    ps | grep -v "\[" | head -40
    tail -40 /var/log/netback.log
    tail -40 /var/log/xen/xen-hotplug.log 2>/dev/null
    tail -20 /var/log/xen/xl-guest-net.log 2>/dev/null
    console guest-net | tail -30
}
timeout 120 xl create /etc/xen/cfg/guest-net.cfg || { ts "xl create failed"; net_diagnose; }
domid=$(xl domid guest-net 2>/dev/null)
be=/local/domain/0/backend/vif/$domid/0
fe=/local/domain/$domid/device/vif/0

if wait_console guest-net RESTART-READY 300; then
    # The guest negotiated multi-queue and offloads with us, and we used segmentation offload.
    echo "frontend: queues=$(xenstore-read $fe/multi-queue-num-queues 2>/dev/null)" \
        "sg=$(xenstore-read $fe/feature-sg 2>/dev/null)" \
        "gso4=$(xenstore-read $fe/feature-gso-tcpv4 2>/dev/null)" \
        "csum-off=$(xenstore-read $fe/feature-no-csum-offload 2>/dev/null)" \
        "hotplug-status=$(xenstore-read $be/hotplug-status 2>/dev/null)"
    grep "netback connected" /var/log/netback.log | tail -1
    [ "$(xenstore-read $fe/multi-queue-num-queues 2>/dev/null)" = 2 ] \
        && grep -q "gso_tcpv4: true" /var/log/netback.log \
        && grep -q "csum: true" /var/log/netback.log \
        && echo "CHECK net-features ok" || echo "CHECK net-features failed"
    [ "$(xenstore-read $be/hotplug-status 2>/dev/null)" = connected ] \
        && [ -e "/sys/class/net/xenbr0/brif/vif$domid.0" ] \
        && echo "CHECK vif-on-bridge ok" || echo "CHECK vif-on-bridge failed"
    sleep 2
    up=$(sha256sum < /tmp/up | cut -d' ' -f1)
    down=$(sha256sum < /tmp/down | cut -d' ' -f1)
    echo "up: guest $(guest_value SHA-UP) dom0 $up; down: dom0 $down guest $(guest_value SHA-DOWN)"
    [ -n "$up" ] && [ "$up" = "$(guest_value SHA-UP)" ] && [ "$down" = "$(guest_value SHA-DOWN)" ] \
        && echo "CHECK net-checksums ok" || echo "CHECK net-checksums failed"
    sleep 1
    gso=$(tr -d ' \n' < /run/netback-stats.json 2>/dev/null | grep -o '"[tr]x_gso_packets":[0-9]*' | cut -d: -f2 | awk '{s+=$1} END {print s+0}')
    echo "gso packets (both directions): $gso"
    tr -d ' \n' < /run/netback-stats.json | head -c 600; echo
    [ "${gso:-0}" -gt 0 ] && echo "CHECK net-gso-used ok" || echo "CHECK net-gso-used failed"
    # Kill netback while the guest uploads (it keeps trying until this listener exists);
    # restart it; the upload must finish intact.
    serve 5003 /tmp/recv-up2.sh
    t=0
    while [ "$(stat -c %s /tmp/up2 2>/dev/null || echo 0)" -lt 1 ] && [ $t -lt 6000 ]; do
        usleep 20000; t=$((t + 1))
    done
    kill -9 "$(cat /run/netback.pid)"
    at_kill=$(stat -c %s /tmp/up2 2>/dev/null || echo 0)
    ts "netback killed during the upload at $at_kill bytes"
    sleep 1
    start_netback
    ts "netback restarted"
    if ! wait_console guest-net UP2-DONE 150; then
        ts "the upload did not finish after the restart"
        net_diagnose
    else
        sleep 1
        up2=$(sha256sum < /tmp/up2 | cut -d' ' -f1)
        echo "up2: guest $(guest_value SHA-UP2) dom0 $up2 ($(stat -c %s /tmp/up2) bytes)"
        # Only a kill that landed mid-transfer proves anything.
        [ "$up2" = "$(guest_value SHA-UP2)" ] && [ "$at_kill" -lt "$(stat -c %s /tmp/up2)" ] \
            && echo "CHECK net-restart-during-transfer ok" \
            || echo "CHECK net-restart-during-transfer failed"
    fi
fi
if wait_console guest-net DETACH-READY 120; then
    if timeout 60 xl network-detach guest-net 0; then
        [ -z "$(xl network-list guest-net | awk 'NR > 1')" ] && detached=ok || detached=failed
    else
        detached=failed
    fi
fi
t=0
while xl domid guest-net >/dev/null 2>&1 && [ $t -lt 240 ]; do sleep 0.5; t=$((t + 1)); done
xl domid guest-net >/dev/null 2>&1 && { ts "guest-net still running: destroying"; xl destroy guest-net; }
console guest-net | grep -a -E "GUEST-|address:|queues:|xen_netfront|SHA-" | sed 's/^/  guest: /'
console guest-net | sed -n 's/.*GUEST-CHECK \([a-z-]*\) \([a-z]*\).*/CHECK \1 \2/p'
console guest-net | grep -q "GUEST-CHECK guest-net-detached ok" && [ "${detached:-failed}" = ok ] \
    && echo "CHECK network-detach ok" || echo "CHECK network-detach failed"
[ -e "/sys/class/net/vif$domid.0" ] && echo "CHECK vif-removed failed" || echo "CHECK vif-removed ok"
echo "--- netback log"
tail -40 /var/log/netback.log
echo "--- hotplug log"
tail -20 /var/log/xen/xen-hotplug.log 2>/dev/null
