# dom0 scenario: demu in dom0 is the ioreq server for the vGPU (00:05.0) of an HVM Linux guest.
# The guest is created paused, demu starts and claims the device, the guest runs; its unmodified
# bochs DRM driver binds and sets a mode; demu's screenshots show the guest's console text and
# then exactly the pattern the guest wrote into /dev/fb0, then what the guest drew with the 2D
# engine (fill, copy, fence through a command ring in VRAM); demu stops cleanly.
. /etc/harness-lib.sh
shot() {
    kill -USR1 "$1"
    t=0
    while [ "$(grep -c 'screenshot written' /tmp/demu.log)" -lt "$2" ] && [ $t -lt 20 ]; do sleep 0.5; t=$((t + 1)); done
    grep 'screenshot written' /tmp/demu.log | tail -1
}
ts "gpu scenario"
if [ ! -x /usr/libexec/xen-qemu-system-i386 ]; then
    echo "no qemu-xen in dom0"
else
    timeout 120 xl create -p /etc/xen/cfg/hvm-gpu.cfg || ts "xl create hvm-gpu failed"
    domid=$(xl domid hvm-gpu 2>/dev/null)
    # Room for the 16 MiB framebuffer demu populates above the guest's RAM.
    xl mem-max hvm-gpu 300
    # demu serves the vGPUs the toolstack attaches through xenstore, as in a GPU driver domain
    # (here dom0 is both): the toolstack writes the backend directory.
    RUST_LOG=$(sed -n "s/.*demulog=\([^ ]*\).*/\1/p" /proc/cmdline | tr + ,) demu --platform xen --serve \
        --screenshot-dir /tmp/shots --stats-file /tmp/demu.json > /tmp/demu.log 2>&1 &
    pid=$!
    be=/local/domain/0/backend/vgpu/$domid/0
    xenstore-write $be/bdf 00:05.0 $be/online 1
    t=0
    while [ "$(xenstore-read $be/hotplug-status 2>/dev/null)" != connected ] && [ $t -lt 30 ]; do sleep 0.5; t=$((t + 1)); done
    if grep -q "emulating the vGPU" /tmp/demu.log && [ "$(xenstore-read $be/hotplug-status 2>/dev/null)" = connected ]; then
        echo "CHECK gpu-demu-claims-device ok"
    else
        echo "CHECK gpu-demu-claims-device failed"
    fi
    xl unpause hvm-gpu
    ts "hvm-gpu unpaused"
    if wait_console hvm-gpu GPU-MODE-SET 200; then
        line=$(shot $pid 1)
        echo "console screenshot: $line"
        case $line in
            *"width=1024 height=768"*) colours=$(echo "$line" | sed -n 's/.*colours=\([0-9]*\).*/\1/p')
                [ "${colours:-0}" -ge 2 ] && echo "CHECK gpu-console-screenshot ok" || echo "CHECK gpu-console-screenshot failed" ;;
            *) echo "CHECK gpu-console-screenshot failed" ;;
        esac
        if wait_console hvm-gpu GPU-PATTERN-WRITTEN 60; then
            line=$(shot $pid 2)
            echo "pattern screenshot: $line"
            case $line in
                *"width=1024 height=768"*"colours=1 "*"dominant=555555"*) echo "CHECK gpu-pattern-screenshot ok" ;;
                *) echo "CHECK gpu-pattern-screenshot failed" ;;
            esac
        fi
        # The engine's work: the screen green but for two blue squares (the fill and its copy),
        # and exactly 1024x768 + 2 x 100x100 pixels drawn in five commands (with two fences).
        if wait_console hvm-gpu GPU-ENGINE-DONE 90; then
            line=$(shot $pid 3)
            echo "engine screenshot: $line"
            sleep 1.5
            stats=$(tr -d ' \n' < /tmp/demu.json 2>/dev/null)
            case "$line|$stats" in
                *"width=1024 height=768"*"colours=2 "*"dominant=00ff00"*'|'*'"commands":5,"pixels":806432,'*)
                    echo "CHECK gpu-2d-engine ok" ;;
                *) echo "CHECK gpu-2d-engine failed" ;;
            esac
        fi
    else
        echo "--- no mode set; guest console:"
        ls -la /var/log/xen/console/
        console hvm-gpu | tail -40
        xl list
    fi
    echo "demu counters: $(tr -d ' \n' < /tmp/demu.json 2>/dev/null)"
    console hvm-gpu | grep -a -E "GUEST-|vgpu|fb0|bochs|drm|records|starts with|engine:|irq handler" | sed 's/^/  guest: /' | head -40
    console hvm-gpu | sed -n 's/.*GUEST-CHECK \([a-z-]*\) \([a-z]*\).*/CHECK \1 \2/p'
    # The toolstack takes the vGPU away: demu destroys its ioreq server and keeps running.
    xenstore-write $be/online 0
    t=0
    while ! grep -q "vGPU detached" /tmp/demu.log && [ $t -lt 20 ]; do sleep 0.5; t=$((t + 1)); done
    if grep -q "vGPU detached" /tmp/demu.log && kill -0 $pid 2>/dev/null; then echo "CHECK gpu-xenstore-detach ok"; else echo "CHECK gpu-xenstore-detach failed"; fi
    xenstore-rm $be
    kill -TERM $pid
    t=0
    while kill -0 $pid 2>/dev/null && [ $t -lt 20 ]; do sleep 0.5; t=$((t + 1)); done
    if kill -0 $pid 2>/dev/null; then echo "CHECK gpu-demu-stops failed"; else wait $pid && echo "CHECK gpu-demu-stops ok" || echo "CHECK gpu-demu-stops failed"; fi
    grep -a -v "request refused" /tmp/demu.log | tail -12
    grep -a "request refused" /tmp/demu.log | head -32
    xl destroy hvm-gpu 2>/dev/null
fi
