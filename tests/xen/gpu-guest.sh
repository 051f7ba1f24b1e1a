# HVM guest, test=gpu: the unmodified bochs DRM driver drives demu's vGPU at 00:05.0; the guest
# writes a banner to its framebuffer console, then a uniform pattern straight into /dev/fb0;
# then it drives demu's 2D engine itself.
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
sleep 15

# The 2D engine, driven from here as a driver would: the bochs driver lets go of the device
# (so /dev/mem may reach its BARs), bus mastering goes on through the config space, the mode is
# set through the DISPI registers in the MMIO BAR, and four commands go into a ring in VRAM:
# fill the screen green, fill a 100x100 blue square at (0,0), copy it to (500,300), fence.
echo 0000:00:05.0 > /sys/bus/pci/drivers/bochs-drm/unbind
printf '\006\000' | dd of=$dev/config bs=1 seek=4 count=2 conv=notrunc 2>/dev/null
bar0=$(sed -n 1p $dev/resource | cut -d' ' -f1)
bar2=$(sed -n 3p $dev/resource | cut -d' ' -f1)
echo "engine: command $(od -An -tx2 -j4 -N2 $dev/config) fb $bar0 mmio $bar2"
w16() { devmem $(($1)) 16 $(($2)); }
w32() { devmem $(($1)) 32 $(($2)); }
r32() { devmem $(($1)) 32; }
dispi=$((bar2 + 0x500))
w16 "dispi + 2 * 4" 0
w16 "dispi + 2 * 1" 1024
w16 "dispi + 2 * 2" 768
w16 "dispi + 2 * 3" 32
w16 "dispi + 2 * 4" 0x41
ring=$((bar0 + 0xf00000))
command() { # index opcode arg src src_pitch dst_offset dst_pitch width height
    at=$((ring + $1 * 64))
    w32 at "$2"; w32 "at + 4" "$3"; w32 "at + 8" "$4"; w32 "at + 12" 0; w32 "at + 16" "$5"
    w32 "at + 20" "$6"; w32 "at + 24" "$7"; w32 "at + 28" "$8"; w32 "at + 32" "$9"
    for r in 36 40 44 48 52 56 60; do w32 "at + r" 0; done
}
command 0 1 0x00ff00 0 0 0 4096 1024 768
command 1 1 0x0000ff 0 0 0 4096 100 100
command 2 2 0 0 4096 "300 * 4096 + 500 * 4" 4096 100 100
command 3 4 0x600d 0 0 0 0 0 0
regs=$((bar2 + 0x800))
echo "engine: id $(r32 regs)"
w32 "regs + 0x04" "ring & 0xffffffff"
w32 "regs + 0x08" "ring >> 32"
w32 "regs + 0x0c" 16
w32 "regs + 0x1c" 1
w32 "regs + 0x14" 4
t=0
while [ "$(r32 "regs + 0x18")" != 0x0000600D ] && [ $t -lt 40 ]; do sleep 0.5; t=$((t + 1)); done
fence=$(r32 "regs + 0x18") status=$(r32 "regs + 0x20") errors=$(r32 "regs + 0x24") head=$(r32 "regs + 0x10")
echo "engine: fence $fence status $status errors $errors head $head"
[ "$fence" = 0x0000600D ] && [ "$errors" = 0x00000000 ] && check gpu-engine-fence ok || check gpu-engine-fence failed
# Then the fence interrupt: MSI on (address 0xfee00000, CPU 0; vector 0xdf, which no Linux
# driver here owns, so the guest's kernel reports it as unhandled), one more fence.
printf '\000\000\340\376\000\000\000\000\337\000' | dd of=$dev/config bs=1 seek=$((0x54)) conv=notrunc 2>/dev/null
printf '\001' | dd of=$dev/config bs=1 seek=$((0x52)) conv=notrunc 2>/dev/null
echo "engine: msi $(od -An -tx1 -j$((0x50)) -N16 $dev/config)"
command 4 4 0x600e 0 0 0 0 0 0
w32 "regs + 0x1c" 3
w32 "regs + 0x14" 5
t=0
while [ "$(r32 "regs + 0x18")" != 0x0000600E ] && [ $t -lt 40 ]; do sleep 0.5; t=$((t + 1)); done
sleep 1
echo "engine: fence $(r32 "regs + 0x18") errors $(r32 "regs + 0x24")"
dmesg | grep -a -i "vector" | tail -3
dmesg | grep -a -q "No irq handler for vector" && check gpu-engine-msi ok || check gpu-engine-msi failed
ts "GPU-ENGINE-DONE"
sleep 60
