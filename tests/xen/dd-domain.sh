# Inside the network and storage driver domain (role=dd): a bridge with a DHCP server, our
# netback and blkback on the real /dev/xen devices, each run by its supervisor (network-dd,
# storage-dd), listeners that report the SHA-256 of what a guest uploads, and one that kills
# both backends when the guest asks (their supervisors start them again).
ts() { echo "[T+$(cut -d' ' -f1 /proc/uptime)s] $*"; }
brctl addbr xenbr0
ip addr add 10.98.0.1/24 dev xenbr0
ip link set xenbr0 up
printf 'start 10.98.0.10\nend 10.98.0.20\ninterface xenbr0\nlease_file /tmp/udhcpd.leases\noption subnet 255.255.255.0\n' > /etc/udhcpd.conf
touch /tmp/udhcpd.leases
udhcpd /etc/udhcpd.conf
dd if=/dev/zero of=/tmp/disk-dd.img bs=1M count=32 2>/dev/null
# Listeners the guest drives: 5001 and 5004 take an upload and report its SHA-256; 5002 kills
# both backends with SIGKILL (the guest asks while its disk write runs) and reports when both
# supervisors have started them again; 5003 reports how many write requests the restarted
# blkback has served.
cat > /tmp/recv-up.sh <<'SCRIPT'
#!/bin/sh
cat > /tmp/up
set -- $(sha256sum < /tmp/up)
echo "DD-RECEIVED $1" > /dev/console
SCRIPT
cat > /tmp/recv-up2.sh <<'SCRIPT'
#!/bin/sh
cat > /tmp/up2
set -- $(sha256sum < /tmp/up2)
echo "DD-RECEIVED2 $1" > /dev/console
SCRIPT
# Their logs go to this domain's console, which dom0's xenconsoled records.
cat > /tmp/start-backends.sh <<'SCRIPT'
#!/bin/sh
RUST_LOG=info network-dd --run-dir /run/network-dd -- --platform xen > /dev/console 2>&1 &
RUST_LOG=info storage-dd --run-dir /run/storage-dd -- --platform xen > /dev/console 2>&1 &
SCRIPT
# health ROLE KEY: a number from the supervisor's health file.
cat > /tmp/health.sh <<'SCRIPT'
#!/bin/sh
sed -n "s/.*\"$2\": \([0-9]*\).*/\1/p" "/run/$1-dd/health.json" 2>/dev/null
SCRIPT
cat > /tmp/restart.sh <<'SCRIPT'
#!/bin/sh
sleep 0.2
kill -9 "$(/tmp/health.sh network pid)" "$(/tmp/health.sh storage pid)"
echo "[T+$(cut -d' ' -f1 /proc/uptime)s] DD-BACKENDS-KILLED" > /dev/console
rm -f /run/storage-dd/blkback-stats.json
t=0
until [ "$(/tmp/health.sh network restarts)" = 1 ] && [ "$(/tmp/health.sh storage restarts)" = 1 ] \
    && [ -n "$(/tmp/health.sh network pid)" ] && [ -n "$(/tmp/health.sh storage pid)" ] || [ $t -gt 100 ]; do
    sleep 0.1; t=$((t + 1))
done
[ $t -le 100 ] && echo "[T+$(cut -d' ' -f1 /proc/uptime)s] DD-BACKENDS-RESTARTED by their supervisors" > /dev/console
SCRIPT
cat > /tmp/report.sh <<'SCRIPT'
#!/bin/sh
sleep 2
n=$(grep '"writes"' /run/storage-dd/blkback-stats.json 2>/dev/null | tr -dc '0-9\n' | awk '{s += $1} END {print s + 0}')
echo "DD-WRITES-AFTER-RESTART $n" > /dev/console
SCRIPT
chmod +x /tmp/recv-up.sh /tmp/recv-up2.sh /tmp/start-backends.sh /tmp/health.sh /tmp/restart.sh /tmp/report.sh
nc -l -p 5001 -e /tmp/recv-up.sh &
nc -l -p 5002 -e /tmp/restart.sh &
nc -l -p 5003 -e /tmp/report.sh &
nc -l -p 5004 -e /tmp/recv-up2.sh &
ls -l /dev/xen/
/tmp/start-backends.sh
sleep 1
ts "DD-READY"
