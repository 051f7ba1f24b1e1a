# Helpers the dom0 scenarios share (sourced from /etc/harness-lib.sh).
ts() { echo "[T+$(cut -d' ' -f1 /proc/uptime)s] $*"; }
# console NAME: the guest's console log so far (xenconsoled writes guest-<name>.log).
console() { cat "/var/log/xen/console/guest-$1.log" 2>/dev/null; }
# wait_console NAME TEXT SECONDS
wait_console() {
    t=0
    while ! console "$1" | grep -q "$2" && [ $t -lt $(($3 * 2)) ]; do sleep 0.5; t=$((t + 1)); done
    console "$1" | grep -q "$2"
}
