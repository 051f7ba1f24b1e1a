# dom0 scenario: a PV network and storage driver domain. Our netback and blkback run in it (not
# in dom0); a PV guest's unmodified xen-netfront and xen-blkfront connect to backends in that
# domain: the guest gets its address from the driver domain's DHCP server across its bridge,
# pings it, uploads data whose SHA-256 the driver domain reports, and checks its disk; then both
# backends are SIGKILLed and restarted inside the driver domain during a disk write, which must
# complete intact, and the link must come back for a second checksummed upload; last, the idle
# guest's disk and NIC are hot-unplugged with xl block-detach and xl network-detach.
. /etc/harness-lib.sh
dd_diagnose() {
    echo "--- driver-domain diagnostics"
    xl list
    xenstore-ls -f /local/domain | grep -E "backend/(vif|vbd)|device/(vif|vbd)" | head -60
    console network-dd | tail -40
    console guest-dd | tail -30
}
ts "driver-domain scenario"
timeout 120 xl create /etc/xen/cfg/network-dd.cfg || { ts "xl create network-dd failed"; dd_diagnose; }
if wait_console network-dd DD-READY 180; then
    echo "CHECK dd-boots ok"
else
    echo "CHECK dd-boots failed"
    dd_diagnose
fi
dd=$(xl domid network-dd 2>/dev/null)
timeout 120 xl create /etc/xen/cfg/guest-dd.cfg || { ts "xl create guest-dd failed"; dd_diagnose; }
guest=$(xl domid guest-dd 2>/dev/null)
# libxl writes these at create time; read them now, before the guest finishes and goes away.
vif_be=$(xenstore-read /local/domain/$guest/device/vif/0/backend-id 2>/dev/null)
vbd_be=$(xenstore-read /local/domain/$guest/device/vbd/51712/backend-id 2>/dev/null)
if wait_console guest-dd DD-IO-DONE 240; then
    echo "driver domain $dd; vif backend $vif_be; vbd backend $vbd_be"
    [ -n "$dd" ] && [ "$vif_be" = "$dd" ] && [ "$vbd_be" = "$dd" ] \
        && echo "CHECK dd-backends-in-driver-domain ok" || echo "CHECK dd-backends-in-driver-domain failed"
    xenstore-ls -f /local/domain/$dd/backend 2>/dev/null | grep -E "/state|hotplug-status|multi-queue" | head -12
    sleep 2
    up_guest=$(console guest-dd | sed -n 's/.*DD-SHA-UP \([0-9a-f]*\).*/\1/p' | tail -1)
    up_dd=$(console network-dd | sed -n 's/.*DD-RECEIVED \([0-9a-f]*\).*/\1/p' | tail -1)
    echo "upload: guest $up_guest driver domain $up_dd"
    [ -n "$up_guest" ] && [ "$up_guest" = "$up_dd" ] \
        && echo "CHECK dd-net-checksums ok" || echo "CHECK dd-net-checksums failed"
    # The restart step: both backends were SIGKILLed and restarted inside the driver domain
    # while the guest wrote; the restarted blkback must have served some of those writes (so
    # the kill landed mid-write), and an upload after it must arrive intact.
    up2_guest=$(console guest-dd | sed -n 's/.*DD-SHA-UP2 \([0-9a-f]*\).*/\1/p' | tail -1)
    up2_dd=$(console network-dd | sed -n 's/.*DD-RECEIVED2 \([0-9a-f]*\).*/\1/p' | tail -1)
    after=$(console network-dd | sed -n 's/.*DD-WRITES-AFTER-RESTART \([0-9]*\).*/\1/p' | tail -1)
    echo "after the restart: upload guest $up2_guest driver domain $up2_dd; writes served by the new blkback: ${after:-none}"
    console network-dd | grep -q "DD-BACKENDS-RESTARTED" && [ "${after:-0}" -gt 0 ] \
        && echo "CHECK dd-restart-during-write ok" || echo "CHECK dd-restart-during-write failed"
    [ -n "$up2_guest" ] && [ "$up2_guest" = "$up2_dd" ] \
        && echo "CHECK dd-restart-net-checksum ok" || echo "CHECK dd-restart-net-checksum failed"
    # Hot-unplug from the driver domain's backends while the guest is idle.
    timeout 60 xl block-detach guest-dd xvda && [ -z "$(xl block-list guest-dd | awk 'NR > 1')" ] \
        && echo "CHECK dd-block-detach ok" || echo "CHECK dd-block-detach failed"
    timeout 60 xl network-detach guest-dd 0 && [ -z "$(xl network-list guest-dd | awk 'NR > 1')" ] \
        && echo "CHECK dd-network-detach ok" || echo "CHECK dd-network-detach failed"
else
    dd_diagnose
fi
t=0
while xl domid guest-dd >/dev/null 2>&1 && [ $t -lt 240 ]; do sleep 0.5; t=$((t + 1)); done
xl domid guest-dd >/dev/null 2>&1 && { ts "guest-dd still running: destroying"; xl destroy guest-dd; }
console guest-dd | grep -a -E "GUEST-|address:|DD-SHA" | sed 's/^/  guest: /'
console guest-dd | sed -n 's/.*GUEST-CHECK \([a-z-]*\) \([a-z]*\).*/CHECK \1 \2/p'
echo "--- driver domain console"
console network-dd | grep -a -v "^\s*$" | tail -25
xl destroy network-dd 2>/dev/null
