# Guest side of the driver-domain scenario (test=dd): NIC and disk served from network-dd.
check() { echo "GUEST-CHECK $1 $2"; }
t=0
while [ ! -e /sys/class/net/eth0 ] && [ $t -lt 60 ]; do sleep 0.5; t=$((t + 1)); done
[ -e /sys/class/net/eth0 ] && check dd-guest-sees-eth0 ok || check dd-guest-sees-eth0 failed
ip link set lo up
ip link set eth0 up
udhcpc -i eth0 -s /etc/udhcpc.script -q -n -t 20 -T 2 >/dev/null 2>&1
addr=$(ip -4 addr show dev eth0 | sed -n 's/.*inet \([0-9.]*\).*/\1/p')
echo "address: $addr"
case $addr in 10.98.0.*) check dd-dhcp-address ok ;; *) check dd-dhcp-address failed ;; esac
ping -c 3 -W 5 10.98.0.1 >/dev/null 2>&1 && check dd-ping ok || check dd-ping failed
dd if=/dev/urandom of=/tmp/up bs=1M count=8 2>/dev/null
echo "DD-SHA-UP $(sha256sum < /tmp/up | cut -d' ' -f1)"
timeout 120 nc 10.98.0.1 5001 -e /etc/net-send-up.sh
t=0
while [ ! -b /dev/xvda ] && [ $t -lt 60 ]; do sleep 0.5; t=$((t + 1)); done
dd if=/tmp/up of=/dev/xvda bs=1M oflag=direct 2>/dev/null
dd if=/dev/xvda of=/tmp/back bs=1M count=8 iflag=direct 2>/dev/null
a=$(sha256sum < /tmp/up) b=$(sha256sum < /tmp/back)
[ -b /dev/xvda ] && [ "$a" = "$b" ] && check dd-disk-checksum ok || check dd-disk-checksum failed
# Backend restart inside the driver domain: while a write of 4 KiB O_DIRECT requests runs, ask
# the driver domain to SIGKILL and restart netback and blkback; the write must finish and read
# back intact, and the link must come back without anything done here.
dd if=/dev/urandom of=/tmp/long bs=1M count=16 2>/dev/null
dd if=/tmp/long of=/dev/xvda bs=4k oflag=direct 2>/dev/null &
writer=$!
echo go | timeout 30 nc 10.98.0.1 5002 >/dev/null 2>&1
wait $writer && written=ok || written=failed
dd if=/dev/xvda of=/tmp/long-back bs=1M count=16 iflag=direct 2>/dev/null
a=$(sha256sum < /tmp/long) b=$(sha256sum < /tmp/long-back)
[ "$written" = ok ] && [ "$a" = "$b" ] && check dd-restart-disk-checksum ok \
    || check dd-restart-disk-checksum failed
ping -c 3 -W 5 10.98.0.1 >/dev/null 2>&1 && check dd-restart-ping ok || check dd-restart-ping failed
dd if=/dev/urandom of=/tmp/up2 bs=1M count=4 2>/dev/null
echo "DD-SHA-UP2 $(sha256sum < /tmp/up2 | cut -d' ' -f1)"
timeout 120 nc 10.98.0.1 5004 -e /etc/net-send-up-dd2.sh
echo go | timeout 30 nc 10.98.0.1 5003 >/dev/null 2>&1
echo "DD-IO-DONE"
# Idle now: dom0 detaches the disk and the NIC (xl block-detach, xl network-detach); both must
# go away here.
t=0
while { [ -b /dev/xvda ] || [ -e /sys/class/net/eth0 ]; } && [ $t -lt 120 ]; do
    sleep 0.5
    t=$((t + 1))
done
[ -b /dev/xvda ] && check dd-guest-disk-detached failed || check dd-guest-disk-detached ok
[ -e /sys/class/net/eth0 ] && check dd-guest-nic-detached failed || check dd-guest-nic-detached ok
