#!/bin/busybox sh
# /init of the project's initramfs (packed by tools/xtask/src/linux.rs with /bin/busybox,
# /bin/pkvm-check and /dev/console). The kernel runs it as PID 1 on /dev/console.
#
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
for word in $(cat /proc/cmdline); do
    case "$word" in
    pkvm.check=*) checks=${word#pkvm.check=} ;;
    esac
done

if [ -n "$checks" ]; then
    # Only the checks' lines on the console from here: no kernel messages in between.
    echo 1 > /proc/sys/kernel/printk
    echo "PKVM-CHECK: userspace up on $(uname -r), running $checks"
    pkvm-check "$checks"
    poweroff -f
fi

echo
echo "pKVM guest: $(uname -sr), $(grep -c ^processor /proc/cpuinfo) CPU(s), $(awk '/MemTotal/ { print $2 / 1024 " MiB" }' /proc/meminfo)"
echo "busybox shell; 'pkvm-check cpus=N,cpuinfo,mte,pac,timer' checks the VM; exit powers off"
# cttyhack gives the shell the console as its controlling terminal (job control, Ctrl-C).
setsid cttyhack sh
poweroff -f
