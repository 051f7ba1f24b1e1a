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
echo "DD-IO-DONE"
