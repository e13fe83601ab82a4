#!/bin/busybox sh
# /init of the project's initramfs (packed by tools/xtask/src/linux/ with /bin/busybox,
# /bin/pkvm-check, /dev/console and Debian's virtio modules in /lib/virtio). The kernel runs it as PID 1 on /dev/console.
#
# With `pkvm.virtio` it first tries the host's virtio devices (below).
# With `pkvm.check=CHECK[,CHECK...]` on the kernel command line it runs those checks
# (tests/linux/pkvm-check.c), whose PKVM-CHECK lines the test runner reads, and powers off.
# Without it, it starts an interactive shell on the console and powers off when it exits.

# The first thing userspace does: the boot-ratio benchmark's mark (the virtual counter).
/bin/pkvm-check stamp

/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev

checks=
virtio=
for word in $(cat /proc/cmdline); do
    case "$word" in
    pkvm.check=*) checks=${word#pkvm.check=} ;;
    pkvm.virtio) virtio=1 ;;
    esac
done

# With `pkvm.virtio`: load Debian's virtio modules (in /lib/virtio, in dependency order) unless
# the kernel has virtio built in (the pKVM guest kernel: /sys/bus/virtio is there from boot),
# then use the VMM's virtio-console (a line the host prints as `hvc0: ...`) and virtio-blk (the
# disk's first bytes; a sector written, the page cache dropped, the sector read back).
if [ -n "$virtio" ]; then
    echo 1 > /proc/sys/kernel/printk
    if [ ! -d /sys/bus/virtio ]; then
        for m in virtio_ring virtio virtio_mmio virtio_console virtio_blk; do
            insmod /lib/virtio/$m.ko || echo "PKVM-CHECK: FAIL virtio: insmod $m"
        done
    fi
    n=0
    while [ ! -e /dev/hvc0 ] || [ ! -e /dev/vda ]; do
        n=$((n + 1))
        [ $n -gt 10 ] && { echo "PKVM-CHECK: FAIL virtio: no /dev/hvc0 or /dev/vda"; break; }
        sleep 1
    done
    echo "PKVM-VIRTIO: hello through virtio-console" > /dev/hvc0
    echo "PKVM-VIRTIO: vda has $(cat /sys/block/vda/size) sectors and begins: $(head -c 28 /dev/vda)"
    echo "PKVM-VIRTIO-WRITTEN" | dd of=/dev/vda bs=512 seek=1 conv=sync,fsync 2>/dev/null
    echo 3 > /proc/sys/vm/drop_caches
    echo "PKVM-VIRTIO: vda sector 1 reads back: $(dd if=/dev/vda bs=512 skip=1 count=1 iflag=direct 2>/dev/null | head -c 19)"
fi

if [ -n "$checks" ]; then
    # Only the checks' lines on the console from here: no kernel messages in between.
    echo 1 > /proc/sys/kernel/printk
    echo "PKVM-CHECK: userspace up on $(uname -r), running $checks"
    pkvm-check "$checks"
    poweroff -f
fi

# An interactive boot with a disk (`cargo xtask run --kernel pkvm --disk FILE`): mounted on /mnt
# if it holds a file system this kernel knows (busybox tries each in /proc/filesystems).
if [ -b /dev/vda ]; then
    mkdir -p /mnt
    if mount /dev/vda /mnt 2>/dev/null; then
        echo "disk: /dev/vda ($(cat /sys/block/vda/size) sectors) mounted on /mnt"
    else
        echo "disk: /dev/vda holds no file system this kernel mounts (a block device only)"
    fi
fi

echo
echo "pKVM guest: $(uname -sr), $(grep -c ^processor /proc/cpuinfo) CPU(s), $(awk '/MemTotal/ { print $2 / 1024 " MiB" }' /proc/meminfo)"
echo "busybox shell; 'pkvm-check cpus=N,cpuinfo,mte,pac,timer' checks the VM; exit powers off"
# cttyhack gives the shell the console as its controlling terminal (job control, Ctrl-C).
setsid cttyhack sh
poweroff -f
