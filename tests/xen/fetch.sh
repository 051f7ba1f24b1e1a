#!/usr/bin/env bash
# Downloads Debian's Xen, kernel and tool packages (once) and unpacks them into $1/x; qemu-xen
# (the HVM guests' default device model) comes with them.
set -euo pipefail
work=$1
cd "$work"
if [ -f x/.done-2 ]; then exit 0; fi
kernel=$(apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
if [ -z "$kernel" ]; then
    apt-get update -qq
    kernel=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
fi
pkgs="xen-hypervisor-4.17-amd64 xen-utils-4.17 xen-utils-common xenstore-utils libxenmisc4.17 libxencall1
      libxendevicemodel1 libxenevtchn1 libxenforeignmemory1 libxengnttab1 libxenhypfs1 libxenstore4
      libxentoolcore1 libxentoollog1 libyajl2 $kernel busybox-static kmod qemu-system-xen"
rm -rf debs && mkdir -p debs
(cd debs && apt-get download $pkgs >/dev/null)
rm -rf x kmod && mkdir -p x
for deb in debs/*.deb; do
    case $(basename "$deb") in
        kmod_*) dpkg -x "$deb" kmod ;;
        *) dpkg -x "$deb" x ;;
    esac
done
version=$(ls x/lib/modules | head -1)
mkdir -p tools && ln -sf ../kmod/bin/kmod tools/depmod
tools/depmod -b "$work/x" "$version"
cp "x/boot/vmlinuz-$version" vmlinuz
zcat x/boot/xen-4.17-amd64.gz > xen
touch x/.done-2
