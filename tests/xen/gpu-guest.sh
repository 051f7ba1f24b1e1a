# HVM guest, test=gpu: the unmodified bochs DRM driver drives demu's vGPU at 00:05.0; the guest
# writes a banner to its framebuffer console, then a uniform pattern straight into /dev/fb0.
ts() { echo "[T+$(cut -d' ' -f1 /proc/uptime)s] $*"; }
check() { echo "GUEST-CHECK $1 $2"; }
dev=/sys/bus/pci/devices/0000:00:05.0
t=0
while [ ! -e /dev/fb0 ] && [ $t -lt 120 ]; do sleep 0.5; t=$((t + 1)); done
echo "vgpu: vendor $(cat $dev/vendor 2>/dev/null) device $(cat $dev/device 2>/dev/null) class $(cat $dev/class 2>/dev/null)"
[ "$(cat $dev/vendor 2>/dev/null)" = 0x1234 ] && [ "$(cat $dev/device 2>/dev/null)" = 0x1111 ] \
    && check gpu-pci-device ok || check gpu-pci-device failed
driver=$(basename "$(readlink $dev/driver 2>/dev/null)" 2>/dev/null)
echo "vgpu driver: $driver"
dmesg | grep -a -i -E "bochs|fb0|drm" | head -12
[ "$driver" = bochs-drm ] && check gpu-bochs-bound ok || check gpu-bochs-bound failed
fb=/sys/class/graphics/fb0
size=$(cat $fb/virtual_size 2>/dev/null) bpp=$(cat $fb/bits_per_pixel 2>/dev/null) stride=$(cat $fb/stride 2>/dev/null)
echo "fb0: size $size bpp $bpp stride $stride"
[ -e /dev/fb0 ] && [ "$bpp" = 32 ] && check gpu-mode-set ok || check gpu-mode-set failed
echo 0 > /sys/class/graphics/fbcon/cursor_blink 2>/dev/null
printf '\033[2J\033[HHello from the HVM guest: the bochs driver on demu\n' > /dev/tty1
sleep 1
ts "GPU-MODE-SET"
sleep 12
height=${size#*,}
# One write of the whole frame: Linux 6.1's fbdev turns a write of exactly one whole line into
# an empty damage rectangle (drm_fb_helper_memory_range_to_clip), which would never be flushed.
tr '\000' '\125' < /dev/zero | dd of=/dev/fb0 bs=$((stride * height)) count=1 iflag=fullblock 2>&1 | tail -2
echo "fb0 starts with: $(head -c 8 /dev/fb0 | od -An -tx1)"
sleep 8
dmesg | tail -5
ts "GPU-PATTERN-WRITTEN"
sleep 60
