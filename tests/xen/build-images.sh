#!/usr/bin/env bash
# Builds the initramfs images: guest.cpio.gz (busybox, xen-blkfront, xen-netfront) and
# dom0.cpio.gz (busybox, the Xen toolstack, our blkback and netback — and not the kernel's
# xen-blkback or xen-netback, so that ours serve backend/vbd and backend/vif — plus the guest
# image and its configurations).
#   build-images.sh WORK BLKBACK-BINARY NETBACK-BINARY HARNESS-DIR DEMU-BINARY
set -euo pipefail
work=$1 blkback=$2 netback=$3 harness=$4 demu=$5
cd "$work"
version=$(ls x/lib/modules | head -1)
xlib=$work/x/usr/lib/x86_64-linux-gnu

. "$harness/image-lib.sh"

# The guest.
base images/guest "$harness/init"
copy_modules images/guest xen-blkfront xen-netfront bochs
cp "$harness"/net-guest.sh "$harness"/dd-guest.sh "$harness"/gpu-guest.sh "$harness"/net-send-up.sh "$harness"/net-send-up2.sh "$harness"/net-send-up-dd2.sh \
    "$harness"/net-recv-down.sh "$harness"/udhcpc.script images/guest/etc/
pack images/guest guest.cpio.gz

# The network and storage driver domain: busybox, the grant and event-channel devices, TAP and
# bridge, our netback and blkback under their supervisors (storage-dd, network-dd, built beside
# blkback); no toolstack.
root=images/dd
base $root "$harness/init"
copy_modules $root xen-evtchn xen-gntdev xen-gntalloc tun bridge
mkdir -p $root/usr/local/bin
supervisors="$(dirname "$blkback")/storage-dd $(dirname "$blkback")/network-dd"
cp "$blkback" "$netback" $supervisors $root/usr/local/bin/
# Debug builds carry ~60 MB of debug info each: too much for a small domain's initramfs.
dd_bins="blkback netback storage-dd network-dd"
for b in $dd_bins; do strip --strip-debug $root/usr/local/bin/$b; done
copy_libs $root $(for b in $dd_bins; do echo $root/usr/local/bin/$b; done)
cp -L /lib/x86_64-linux-gnu/libgcc_s.so.1 $root/lib/x86_64-linux-gnu/ 2>/dev/null || true
cp "$harness"/dd-domain.sh $root/etc/
pack $root dd.cpio.gz

# dom0.
root=images/dom0
base $root "$harness/init"
copy_modules $root xen-evtchn xen-gntdev xen-gntalloc xen-privcmd xenfs loop tun bridge
mkdir -p $root/usr/lib/xen-4.17/bin $root/etc/xen/cfg $root/var/lib/xen $root/var/log/xen $root/var/lib/xenstored $root/boot
for b in xl libxl-save-helper xen-init-dom0 xenconsoled xenstored; do
    cp "x/usr/lib/xen-4.17/bin/$b" $root/usr/lib/xen-4.17/bin/
done
cp x/usr/bin/xenstore $root/usr/bin/
for a in read write ls list exists rm chmod watch control; do ln -sf xenstore "$root/usr/bin/xenstore-$a"; done
cp -a x/etc/xen/scripts x/etc/xen/xl.conf $root/etc/xen/
# The hotplug scripts are bash and need util-linux losetup/flock and coreutils stat.
cp /usr/bin/bash $root/bin/bash
rm -f $root/bin/losetup $root/bin/stat
cp /usr/sbin/losetup $root/sbin/losetup
cp /usr/bin/flock $root/usr/bin/flock
cp /usr/bin/stat $root/bin/stat
mkdir -p $root/usr/local/bin
cp "$blkback" $root/usr/local/bin/blkback
cp "$netback" $root/usr/local/bin/netback
cp "$demu" $root/usr/local/bin/demu
strip --strip-debug $root/usr/local/bin/blkback $root/usr/local/bin/netback $root/usr/local/bin/demu
copy_libs $root $root/usr/lib/xen-4.17/bin/* $root/usr/bin/xenstore $root/bin/bash $root/sbin/losetup \
    $root/usr/bin/flock $root/bin/stat $root/usr/local/bin/blkback $root/usr/local/bin/netback \
    $root/usr/local/bin/demu
# HVM guests: qemu-xen (their default device model), hvmloader, SeaBIOS and QEMU's option ROMs.
mkdir -p $root/usr/libexec $root/usr/lib/xen-4.17/boot $root/usr/share/qemu/keymaps $root/usr/share/seabios
cp x/usr/libexec/xen-qemu-system-i386 $root/usr/libexec/
cp x/usr/lib/xen-4.17/boot/hvmloader $root/usr/lib/xen-4.17/boot/
copy_libs $root $root/usr/libexec/xen-qemu-system-i386
cp -L /usr/share/seabios/*.bin $root/usr/share/seabios/
cp -L /usr/share/seabios/vgabios*.bin $root/usr/share/qemu/ 2>/dev/null || true
for rom in linuxboot.bin linuxboot_dma.bin kvmvapic.bin multiboot.bin multiboot_dma.bin pvh.bin; do
    cp -L "/usr/share/qemu/$rom" $root/usr/share/qemu/ 2>/dev/null || true
done
cp -L /usr/lib/ipxe/qemu/*.rom $root/usr/share/qemu/ 2>/dev/null || true
cp -L /usr/share/qemu/keymaps/en-us $root/usr/share/qemu/keymaps/ 2>/dev/null || true
# OVMF, where libxl looks for it (bios="ovmf"): the UEFI firmware whose video driver drives demu.
mkdir -p $root/usr/share/ovmf
cp -L /usr/share/ovmf/OVMF.fd $root/usr/share/ovmf/ 2>/dev/null || true
mkdir -p $root/usr/lib/x86_64-linux-gnu
cp -a "$xlib"/libxen*.so* "$xlib"/libxl*.so* "$xlib"/libyajl*.so* $root/usr/lib/x86_64-linux-gnu/
cp -L /lib/x86_64-linux-gnu/libgcc_s.so.1 $root/lib/x86_64-linux-gnu/ 2>/dev/null || true
cp vmlinuz $root/boot/vmlinuz
cp guest.cpio.gz dd.cpio.gz $root/boot/
cp "$harness"/*.cfg $root/etc/xen/cfg/
cp "$harness"/blk.sh "$harness"/net.sh "$harness"/dd.sh "$harness"/gpu.sh "$harness"/ovmf.sh $root/etc/
cp "$harness"/lib.sh $root/etc/harness-lib.sh
pack $root dom0.cpio.gz
ls -la guest.cpio.gz dd.cpio.gz dom0.cpio.gz
