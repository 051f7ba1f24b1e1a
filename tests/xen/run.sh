#!/usr/bin/env bash
# The real-Xen harness: Debian's Xen 4.17 and Linux 6.1 booted under QEMU (software emulation),
# our blkback serving the disk of a PV guest whose unmodified xen-blkfront drives it.
#
#   tests/xen/run.sh            build everything, boot, run the block scenario, check the log
#
# Work files go to target/xen-harness/ (packages are downloaded once and kept). The scenario's
# verdict lines start with "CHECK"; the run fails unless every expected one says ok.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/../.." && pwd)
work=${XEN_HARNESS_DIR:-$top/target/xen-harness}
mkdir -p "$work"
cd "$work"

need=()
for tool in qemu-system-x86_64:qemu-system-x86 cpio:cpio losetup:mount flock:util-linux; do
    command -v "${tool%%:*}" >/dev/null 2>&1 || need+=("${tool##*:}")
done
if [ "${#need[@]}" -gt 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${need[@]}"
fi

"$here/fetch.sh" "$work"
(cd "$top" && cargo build --locked -p blkback --bin blkback)
"$here/build-images.sh" "$work" "$top/target/debug/blkback" "$here"

log=$work/xen.log
echo "booting Xen + dom0 under QEMU (TCG); log: $log"
start=$(date +%s)
timeout "${XEN_HARNESS_TIMEOUT:-900}" qemu-system-x86_64 \
    -accel tcg,thread=multi,tb-size=256 -cpu max,-xsave,-avx,-avx2 -smp 2 -m 2560 -M pc \
    -display none -no-reboot -serial stdio \
    -kernel "$work/xen" \
    -append "console=com1 com1=115200,8n1 dom0_mem=1024M,max:1024M loglvl=all guest_loglvl=all smap=0 smep=0" \
    -initrd "$work/vmlinuz console=hvc0 earlyprintk=xen scenario=blk blklog=${BLKBACK_LOG:-info},$work/dom0.cpio.gz" \
    </dev/null >"$log" 2>&1 || true
echo "QEMU ran $(( $(date +%s) - start )) s"

grep -a -E "CHECK|blkfront|T\+" "$log" | grep -a -v "^\s*$" | tail -60 || true
fail=0
passed=0
for check in guest-sees-xvda features-negotiated multi-queue odirect-checksum flush-heavy restart-during-io block-detach; do
    if grep -a -q "CHECK $check ok" "$log"; then
        echo "ok   $check"
        passed=$((passed + 1))
    else
        echo "FAIL $check"
        fail=1
    fi
done
echo "xen-harness: $passed passed, $((7 - passed)) failed"
exit $fail
