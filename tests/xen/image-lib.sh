# Initramfs building blocks, sourced by build-images.sh and by tests/vhost-user/run.sh. They
# work in $work (where tests/xen/fetch.sh unpacked Debian's packages into x/) and expect
# $version (the kernel's) and $xlib (the unpacked shared libraries) to be set.

# copy_libs ROOT BINARY...: the shared-library closure, from the unpacked packages first.
copy_libs() {
    local root=$1; shift
    for bin in "$@"; do
        LD_LIBRARY_PATH=$xlib ldd "$bin" 2>/dev/null | awk '/=>/ {print $3} /^\t\/lib64/ {print $1}' | while read -r lib; do
            [ -n "$lib" ] || continue
            case $lib in
                "$work"/x/*) dest=$root/${lib#"$work"/x} ;;
                *) dest=$root$lib ;;
            esac
            mkdir -p "$(dirname "$dest")"
            [ -e "$dest" ] || cp -L "$lib" "$dest"
        done
    done
}

# copy_modules ROOT MODULE...: modules and their dependencies, load order in /etc/modules.order.
copy_modules() {
    local root=$1; shift
    local dir=x/lib/modules/$version
    mkdir -p "$root/lib/modules/$version"
    for m in "$@"; do
        local line deps self
        line=$(grep -E "/$m\.ko(\.[a-z]+)?:" "$dir/modules.dep" | head -1)
        [ -n "$line" ] || { echo "no module $m" >&2; exit 1; }
        self=${line%%:*}
        deps=${line#*:}
        for d in $(echo $deps | tr ' ' '\n' | tac) $self; do
            mkdir -p "$root/lib/modules/$version/$(dirname "$d")"
            cp -n "$dir/$d" "$root/lib/modules/$version/$d"
            grep -qx "$d" "$root/etc/modules.order" 2>/dev/null || echo "$d" >> "$root/etc/modules.order"
        done
    done
}

# base ROOT INIT: busybox, a minimal /etc and INIT as /init.
base() {
    local root=$1 init=$2
    rm -rf "$root"
    mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,etc,proc,sys,dev,run,tmp,var/lib,var/log,root,mnt,lib64}
    cp x/bin/busybox "$root/bin/busybox"
    for applet in $(x/bin/busybox --list); do [ -e "$root/bin/$applet" ] || ln -s busybox "$root/bin/$applet"; done
    cp "$init" "$root/init"
    chmod +x "$root/init"
    echo "root:x:0:0:root:/root:/bin/sh" > "$root/etc/passwd"
    echo "root:x:0:" > "$root/etc/group"
    ln -s /run "$root/var/run"
    : > "$root/etc/modules.order"
}

pack() {
    (cd "$1" && find . | cpio -o -H newc --quiet) | gzip -1 > "$2"
}

