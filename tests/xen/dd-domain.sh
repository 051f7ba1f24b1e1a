# Inside the network and storage driver domain (role=dd): a bridge with a DHCP server, our
# netback and blkback on the real /dev/xen devices, and a listener that reports the SHA-256 of
# what a guest uploads.
ts() { echo "[T+$(cut -d' ' -f1 /proc/uptime)s] $*"; }
brctl addbr xenbr0
ip addr add 10.98.0.1/24 dev xenbr0
ip link set xenbr0 up
printf 'start 10.98.0.10\nend 10.98.0.20\ninterface xenbr0\nlease_file /tmp/udhcpd.leases\noption subnet 255.255.255.0\n' > /etc/udhcpd.conf
touch /tmp/udhcpd.leases
udhcpd /etc/udhcpd.conf
dd if=/dev/zero of=/tmp/disk-dd.img bs=1M count=32 2>/dev/null
cat > /tmp/recv-up.sh <<'SCRIPT'
#!/bin/sh
cat > /tmp/up
set -- $(sha256sum < /tmp/up)
echo "DD-RECEIVED $1" > /dev/console
SCRIPT
chmod +x /tmp/recv-up.sh
nc -l -p 5001 -e /tmp/recv-up.sh &
# Their logs go to this domain's console, which dom0's xenconsoled records.
ls -l /dev/xen/
RUST_LOG=info netback --platform xen > /dev/console 2>&1 &
RUST_LOG=info blkback --platform xen > /dev/console 2>&1 &
sleep 1
ts "DD-READY"
