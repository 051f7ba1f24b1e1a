#!/usr/bin/env bash
# The real-Xen harness: Debian's Xen 4.17 and Linux 6.1 booted under QEMU (software emulation),
# our blkback serving the disks of PV guests whose unmodified xen-blkfront drives them, our
# netback serving the NIC of a PV guest whose unmodified xen-netfront drives it, both again in a
# PV driver domain, and demu emulating the vGPU of an HVM guest whose bochs DRM driver drives it.
#
#   tests/xen/run.sh            build everything, boot, run the block and network scenarios,
#                               check the log
#
# RUST_LOG of our programs: BLKBACK_LOG, NETBACK_LOG, DEMU_LOG (write + for the commas QEMU's
# command line cannot carry, e.g. DEMU_LOG=info+demu::ioreq=debug).
# XEN_HARNESS_SCENARIOS picks the dom0 scenarios and their checks (default blk+net+dd+gpu;
# ovmf, not in the default set, boots an HVM guest with OVMF on demu's vGPU: QEMU 7.2's TCG
# often aborts while Xen starts OVMF, see tests/xen/ovmf.sh). XEN_HARNESS_TCG: QEMU's TCG
# threading, multi (default) or single.
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
[ -f /usr/share/ovmf/OVMF.fd ] || need+=(ovmf)
if [ "${#need[@]}" -gt 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${need[@]}"
fi

"$here/fetch.sh" "$work"
(cd "$top" && cargo build --locked -p blkback --bin blkback -p netback --bin netback -p demu --bin demu \
    -p storage-dd --bin storage-dd -p network-dd --bin network-dd)
"$here/build-images.sh" "$work" "$top/target/debug/blkback" "$top/target/debug/netback" "$here" \
    "$top/target/debug/demu"

scenarios=${XEN_HARNESS_SCENARIOS:-blk+net+dd+gpu}
log=$work/xen.log
[ "$scenarios" = blk+net+dd+gpu ] || log=$work/xen-$(echo "$scenarios" | tr + -).log
echo "booting Xen + dom0 under QEMU (TCG); log: $log"
start=$(date +%s)
timeout "${XEN_HARNESS_TIMEOUT:-900}" qemu-system-x86_64 \
    -accel "tcg,thread=${XEN_HARNESS_TCG:-multi},tb-size=256" -cpu max,-xsave,-avx,-avx2 -smp 2 -m 2560 -M pc \
    -display none -no-reboot -serial stdio \
    -kernel "$work/xen" \
    -append "console=com1 com1=115200,8n1 dom0_mem=1024M,max:1024M loglvl=all guest_loglvl=all smap=0 smep=0" \
    -initrd "$work/vmlinuz console=hvc0 earlyprintk=xen scenario=$scenarios blklog=${BLKBACK_LOG:-info} netlog=${NETBACK_LOG:-info} demulog=${DEMU_LOG:-info},$work/dom0.cpio.gz" \
    </dev/null >"$log" 2>&1 || true
echo "QEMU ran $(( $(date +%s) - start )) s"

grep -a -E "CHECK|blkfront|netfront|T\+|up:|up2:|frontend:|tx_gso|screenshot|vgpu|fb0" "$log" | grep -a -v "^\s*$" | tail -90 || true
fail=0
passed=0
# The verdicts each scenario owes.
scenario_checks() {
    case $1 in
        blk) echo "guest-sees-xvda features-negotiated multi-queue odirect-checksum flush-heavy
            cdrom-info cdrom-medium online-resize restart-during-io block-detach" ;;
        net) echo "guest-sees-eth0 dhcp-address net-multi-queue ping net-features vif-on-bridge
            net-checksums net-gso-used net-restart-during-transfer ping-after-restart
            network-detach vif-removed" ;;
        dd) echo "dd-boots dd-guest-sees-eth0 dd-dhcp-address dd-ping dd-backends-in-driver-domain
            dd-net-checksums dd-disk-checksum dd-restart-disk-checksum dd-restart-ping
            dd-restart-during-write dd-restart-net-checksum dd-block-detach dd-network-detach
            dd-guest-disk-detached dd-guest-nic-detached" ;;
        gpu) echo "gpu-demu-claims-device gpu-pci-device gpu-bochs-bound gpu-mode-set
            gpu-console-screenshot gpu-pattern-screenshot gpu-engine-fence gpu-2d-engine
            gpu-engine-msi gpu-xenstore-detach gpu-demu-stops" ;;
        ovmf) echo "gpu-ovmf-screenshot" ;;
    esac
}
checks=""
for sc in $(echo "$scenarios" | tr + ' '); do checks="$checks $(scenario_checks "$sc")"; done
total=$(echo $checks | wc -w)
for check in $checks; do
    if grep -a -q "CHECK $check ok" "$log"; then
        echo "ok   $check"
        passed=$((passed + 1))
    else
        echo "FAIL $check"
        fail=1
    fi
done
echo "xen-harness: $passed passed, $((total - passed)) failed"
exit $fail
