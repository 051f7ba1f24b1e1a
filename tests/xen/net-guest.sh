# Guest side of the network scenario (test=net): the unmodified Linux xen-netfront talks to our
# netback in dom0 across the bridge xenbr0.
check() { echo "GUEST-CHECK $1 $2"; }
ts() { echo "[T+$(cut -d' ' -f1 /proc/uptime)s] $*"; }
t=0
while [ ! -e /sys/class/net/eth0 ] && [ $t -lt 60 ]; do sleep 0.5; t=$((t + 1)); done
[ -e /sys/class/net/eth0 ] && check guest-sees-eth0 ok || { check guest-sees-eth0 failed; exit 0; }
ip link set lo up
ip link set eth0 up
# The address comes from dom0's DHCP server across netback and the bridge.
udhcpc -i eth0 -s /etc/udhcpc.script -q -n -t 20 -T 2 >/dev/null 2>&1
addr=$(ip -4 addr show dev eth0 | sed -n 's/.*inet \([0-9.]*\).*/\1/p')
echo "address: $addr"
case $addr in 10.99.0.*) check dhcp-address ok ;; *) check dhcp-address failed ;; esac
queues=$(ls /sys/class/net/eth0/queues | grep -c '^tx-')
echo "queues: $queues"
[ "$queues" -ge 2 ] && check net-multi-queue ok || check net-multi-queue failed
ping -c 3 -W 5 10.99.0.1 >/dev/null 2>&1 && check ping ok || check ping failed
# Checksummed transfers both ways (dom0 compares the hashes from this console).
dd if=/dev/urandom of=/tmp/up bs=1M count=8 2>/dev/null
echo "SHA-UP $(sha256sum < /tmp/up | cut -d' ' -f1)"
timeout 120 nc 10.99.0.1 5001 -e /etc/net-send-up.sh
timeout 120 nc 10.99.0.1 5002 -e /etc/net-recv-down.sh
echo "SHA-DOWN $(sha256sum < /tmp/down | cut -d' ' -f1)"
# A longer upload (64 MiB: a 16 MiB pattern four times) while dom0 kills and restarts netback.
dd if=/dev/urandom of=/tmp/up2 bs=1M count=16 2>/dev/null
echo "SHA-UP2 $(cat /tmp/up2 /tmp/up2 /tmp/up2 /tmp/up2 | sha256sum | cut -d' ' -f1)"
echo "RESTART-READY"
# (dom0 listens once it is ready to kill netback; until then the connection is refused.)
t=0
until timeout 300 nc 10.99.0.1 5003 -e /etc/net-send-up2.sh 2>/dev/null || [ $t -ge 600 ]; do
    sleep 0.5; t=$((t + 1))
done
echo "UP2-DONE"
ping -c 2 -W 5 10.99.0.1 >/dev/null 2>&1 && check ping-after-restart ok || check ping-after-restart failed
# Hot-unplug: dom0 runs xl network-detach; the interface goes away.
echo "DETACH-READY"
t=0
while [ -e /sys/class/net/eth0 ] && [ $t -lt 120 ]; do sleep 0.5; t=$((t + 1)); done
[ -e /sys/class/net/eth0 ] && check guest-net-detached failed || check guest-net-detached ok
