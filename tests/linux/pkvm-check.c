// pkvm-check: checks, from a Linux guest's userspace, that the virtual machine it runs in gives
// it what the hypervisor promises: the CPUs, MTE, pointer authentication and a timer.
//
// Built by `cargo xtask` (tools/xtask/src/linux.rs) as a static arm64 program:
//   aarch64-linux-gnu-gcc -static -O2 -march=armv8.5-a+memtag pkvm-check.c
// and started by the initramfs's /init with the value of `pkvm.check=` on the kernel command line.
//
// Usage:
//   pkvm-check CHECK[,CHECK...]   run the checks, one line each, then a summary line
//   pkvm-check stamp              print the virtual counter (the boot-ratio benchmark's mark)
//
// Checks:
//   cpus=N             N CPUs online (sysconf and /sys/devices/system/cpu/online)
//   cpuinfo[=F+F...]   /proc/cpuinfo "Features" lists each F (default: mte+paca+pacg);
//                      an F written no-X requires that X is NOT listed (e.g. cpuinfo=paca+no-mte)
//   mte                a tag mismatch faults synchronously (SIGSEGV, SEGV_MTESERR), a match does not
//   pac                a corrupted signed pointer faults on use (SIGSEGV, or SIGILL with FEAT_FPAC);
//                      an untouched one authenticates and works
//   timer              nanosleep(1 s) takes between 0.9 and 3 s of CLOCK_MONOTONIC
//   sve=BYTES          SVE with a largest vector length of BYTES (HWCAP_SVE; PR_SVE_SET_VL asking
//                      for 256 bytes gets BYTES); three processes fill Z0..Z31 with their own
//                      patterns and spin 1 s of the virtual counter (interrupts, exits to the
//                      hypervisor, vCPU switches on the host) before checking every byte: one on
//                      each of the first two CPUs at BYTES, and one sharing CPU 0 at 16 bytes (the
//                      guest kernel switches ZCR_EL1 between the two on CPU 0)
//   dice               /dev/open-dice0 (the handover page EL2 wrote, CONFIG_OPEN_DICE) holds
//                      EL2's handover (magic PKVMDICE, version 1, debug mode); prints
//                      "PKVM-DICE: PKVMDICE measurement HEX" for the runner to compare
//   blkread=DEV        reads /dev/DEV whole with O_DIRECT in 256 KiB requests (the block-throughput
//                      benchmark); each 512-byte sector must begin with its own number (64-bit
//                      little-endian: the bench disk `cargo xtask bench` writes); prints
//                      "PKVM-BLK: read N bytes in T ns of CLOCK_MONOTONIC, buffer in R physical
//                      runs" (R: 1 when a physically contiguous buffer was found, 0 if unknown)
//
// Output, one line per check and a summary, the contract with the test runner:
//   PKVM-CHECK: ok NAME details          PKVM-CHECK: FAIL NAME why
//   PKVM-CHECK: passed N/N               PKVM-CHECK: failed K/N
// The exit status is 0 when every check passed.

#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/auxv.h>
#include <sys/mman.h>
#include <sched.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

// Values from the Linux UAPI headers (asm/hwcap.h, asm/mman.h, linux/prctl.h, asm/siginfo.h),
// for a libc whose headers predate them.
#ifndef HWCAP_PACA
#define HWCAP_PACA (1UL << 30)
#endif
#ifndef HWCAP2_MTE
#define HWCAP2_MTE (1UL << 18)
#endif
#ifndef PROT_MTE
#define PROT_MTE 0x20
#endif
#ifndef PR_SET_TAGGED_ADDR_CTRL
#define PR_SET_TAGGED_ADDR_CTRL 55
#define PR_TAGGED_ADDR_ENABLE (1UL << 0)
#endif
#ifndef PR_MTE_TCF_SYNC
#define PR_MTE_TCF_SYNC (1UL << 1)
#endif
#ifndef PR_MTE_TAG_SHIFT
#define PR_MTE_TAG_SHIFT 3
#endif
#ifndef SEGV_MTESERR
#define SEGV_MTESERR 9
#endif

static int checks_run, checks_failed;

// One result line. Everything goes straight to the console (stdout is unbuffered).
static void report(int ok, const char *name, const char *fmt, ...) {
    char details[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(details, sizeof details, fmt, ap);
    va_end(ap);
    checks_run++;
    if (!ok)
        checks_failed++;
    printf("PKVM-CHECK: %s %s %s\n", ok ? "ok" : "FAIL", name, details);
}

// ---- Faults on purpose -------------------------------------------------------------------
//
// A check that expects a fault runs the faulting access inside guarded(): the handler for
// SIGSEGV, SIGBUS and SIGILL records the signal and jumps back with siglongjmp, so the program
// goes on with the next step. A fault in a step that must succeed is caught the same way and
// reported as a failure, instead of killing the program before its summary line.

static sigjmp_buf fault_jump;
static volatile sig_atomic_t fault_signo, fault_code;

static void on_fault(int signo, siginfo_t *info, void *ucontext) {
    (void)ucontext;
    fault_signo = signo;
    fault_code = info->si_code;
    siglongjmp(fault_jump, 1);
}

struct fault {
    int signo; // 0: no fault
    int code;  // si_code of the fault
};

// Runs step(arg) and says whether and how it faulted.
static struct fault guarded(void (*step)(void *), void *arg) {
    struct sigaction sa, old[3];
    const int signals[3] = {SIGSEGV, SIGBUS, SIGILL};
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = on_fault;
    sa.sa_flags = SA_SIGINFO;
    sigemptyset(&sa.sa_mask);
    for (int i = 0; i < 3; i++)
        sigaction(signals[i], &sa, &old[i]);
    fault_signo = 0;
    fault_code = 0;
    // savemask=1: the handler's siglongjmp also unblocks the signal it was delivered with.
    if (sigsetjmp(fault_jump, 1) == 0)
        step(arg);
    for (int i = 0; i < 3; i++)
        sigaction(signals[i], &old[i], NULL);
    return (struct fault){fault_signo, fault_code};
}

static const char *signal_name(int signo) {
    switch (signo) {
    case 0: return "no fault";
    case SIGSEGV: return "SIGSEGV";
    case SIGBUS: return "SIGBUS";
    case SIGILL: return "SIGILL";
    default: return "another signal";
    }
}

// ---- cpus=N --------------------------------------------------------------------------------

// Counts the CPUs in a kernel CPU list such as "0-3,5" (Documentation/admin-guide/cputopology).
static int count_cpu_list(const char *s) {
    int n = 0;
    while (*s && *s != '\n') {
        char *end;
        long first = strtol(s, &end, 10), last = first;
        if (end == s)
            return -1;
        if (*end == '-') {
            s = end + 1;
            last = strtol(s, &end, 10);
            if (end == s || last < first)
                return -1;
        }
        n += (int)(last - first + 1);
        s = *end == ',' ? end + 1 : end;
    }
    return n;
}

static void check_cpus(const char *arg) {
    char *end;
    long expected = arg ? strtol(arg, &end, 10) : 0;
    if (!arg || *end || expected < 1) {
        report(0, "cpus", "needs the expected count: cpus=N");
        return;
    }
    long by_sysconf = sysconf(_SC_NPROCESSORS_ONLN);
    char list[256] = "";
    FILE *f = fopen("/sys/devices/system/cpu/online", "r");
    if (f) {
        if (!fgets(list, sizeof list, f))
            list[0] = 0;
        fclose(f);
    }
    list[strcspn(list, "\n")] = 0;
    int by_sysfs = count_cpu_list(list);
    report(by_sysconf == expected && by_sysfs == expected, "cpus", "expected %ld, sysconf(_SC_NPROCESSORS_ONLN) %ld, /sys/devices/system/cpu/online \"%s\" (%d)",
           expected, by_sysconf, list, by_sysfs);
}

// ---- cpuinfo[=F+F...] --------------------------------------------------------------------

// Whether the space-separated feature list `features` has the word `word`.
static int has_word(const char *features, const char *word) {
    size_t n = strlen(word);
    for (const char *p = features; (p = strstr(p, word)) != NULL; p += n) {
        int starts = p == features || p[-1] == ' ' || p[-1] == '\t';
        int ends = p[n] == 0 || p[n] == ' ' || p[n] == '\n';
        if (starts && ends)
            return 1;
    }
    return 0;
}

static void check_cpuinfo(const char *arg) {
    // The first CPU's "Features" line; every CPU must list the same (the kernel shows the
    // system-wide hwcaps on every line).
    char line[2048], features[2048] = "";
    int lines = 0, differ = 0;
    FILE *f = fopen("/proc/cpuinfo", "r");
    if (!f) {
        report(0, "cpuinfo", "cannot open /proc/cpuinfo: %s", strerror(errno));
        return;
    }
    while (fgets(line, sizeof line, f)) {
        char *colon = strchr(line, ':');
        if (strncmp(line, "Features", 8) != 0 || !colon)
            continue;
        if (lines++ == 0)
            snprintf(features, sizeof features, "%s", colon + 2);
        else if (strcmp(features, colon + 2) != 0)
            differ = 1;
    }
    fclose(f);
    features[strcspn(features, "\n")] = 0;

    char wanted[256];
    snprintf(wanted, sizeof wanted, "%s", arg ? arg : "mte+paca+pacg");
    char missing[256] = "", *save = NULL;
    for (char *w = strtok_r(wanted, "+", &save); w; w = strtok_r(NULL, "+", &save)) {
        int absent = strncmp(w, "no-", 3) == 0;
        const char *feature = absent ? w + 3 : w;
        if (has_word(features, feature) == absent) {
            strncat(missing, " ", sizeof missing - strlen(missing) - 1);
            strncat(missing, w, sizeof missing - strlen(missing) - 1);
        }
    }
    int ok = lines > 0 && !differ && !missing[0];
    if (ok)
        report(1, "cpuinfo", "%s on all %d CPUs", arg ? arg : "mte+paca+pacg", lines);
    else if (lines == 0)
        report(0, "cpuinfo", "no Features line in /proc/cpuinfo");
    else if (differ)
        report(0, "cpuinfo", "CPUs list different features");
    else
        report(0, "cpuinfo", "not as expected:%s (Features: %s)", missing, features);
}

// ---- mte ---------------------------------------------------------------------------------
//
// FEAT_MTE: every 16-byte granule of a PROT_MTE mapping has a 4-bit allocation tag; a pointer
// carries a logical tag in bits 59:56. With synchronous tag checking (PR_MTE_TCF_SYNC) a load
// through a pointer whose tag differs from the granule's faults at once: SIGSEGV, SEGV_MTESERR.

// Sets pointer bits 59:56 (the logical tag).
static uint64_t *with_tag(uint64_t *p, unsigned tag) {
    return (uint64_t *)(((uintptr_t)p & ~(0xfUL << 56)) | ((uintptr_t)(tag & 0xf) << 56));
}

static unsigned tag_of(const void *p) {
    return (unsigned)((uintptr_t)p >> 56) & 0xf;
}

struct access {
    uint64_t *p;
    uint64_t value;
};

static void load(void *arg) {
    struct access *a = arg;
    a->value = *(volatile uint64_t *)a->p;
}

static void check_mte(void) {
    if (!(getauxval(AT_HWCAP2) & HWCAP2_MTE)) {
        report(0, "mte", "the kernel reports no MTE (HWCAP2_MTE clear)");
        return;
    }
    // Tagged addresses on, synchronous tag-check faults, and IRG may pick any tag but 0
    // (the include mask 0xfffe), so a new tag always differs from an untagged pointer's.
    if (prctl(PR_SET_TAGGED_ADDR_CTRL, PR_TAGGED_ADDR_ENABLE | PR_MTE_TCF_SYNC | (0xfffeUL << PR_MTE_TAG_SHIFT), 0, 0, 0) != 0) {
        report(0, "mte", "prctl(PR_SET_TAGGED_ADDR_CTRL) failed: %s", strerror(errno));
        return;
    }
    // A new PROT_MTE mapping has every granule's allocation tag 0.
    uint64_t *page = mmap(NULL, 4096, PROT_READ | PROT_WRITE | PROT_MTE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (page == MAP_FAILED) {
        report(0, "mte", "mmap(PROT_MTE) failed: %s", strerror(errno));
        return;
    }
    // IRG: a random tag for the pointer; STG: give the first granule that tag; STR through it.
    uint64_t *tagged = page;
    asm volatile("irg %0, %0\n\t"
                 "stg %0, [%0]\n\t"
                 "str %1, [%0]"
                 : "+r"(tagged)
                 : "r"(0x1234abcdUL)
                 : "memory");
    unsigned tag = tag_of(tagged);

    struct access right = {tagged, 0};
    struct fault f_right = guarded(load, &right);
    // The same granule through the untagged pointer (tag 0) and through the next tag.
    struct access untagged = {page, 0};
    struct fault f_untagged = guarded(load, &untagged);
    unsigned other = tag % 15 + 1; // a non-zero tag other than `tag`
    struct access wrong = {with_tag(page, other), 0};
    struct fault f_wrong = guarded(load, &wrong);

    int mismatch_faults = f_untagged.signo == SIGSEGV && f_untagged.code == SEGV_MTESERR && f_wrong.signo == SIGSEGV && f_wrong.code == SEGV_MTESERR;
    int match_works = f_right.signo == 0 && right.value == 0x1234abcdUL;
    report(tag != 0 && mismatch_faults && match_works, "mte",
           "granule tag %u: matching load %s (value %#lx); tag 0 load: %s si_code %d; tag %u load: %s si_code %d (want SIGSEGV si_code %d)", tag,
           f_right.signo ? signal_name(f_right.signo) : "ok", (unsigned long)right.value, signal_name(f_untagged.signo), f_untagged.code, other,
           signal_name(f_wrong.signo), f_wrong.code, SEGV_MTESERR);
    munmap(page, 4096);
    prctl(PR_SET_TAGGED_ADDR_CTRL, 0, 0, 0, 0);
}

// ---- pac ---------------------------------------------------------------------------------
//
// FEAT_PAuth: PACIA puts a pointer authentication code, computed from the pointer, a modifier
// and the APIA key, in the pointer's unused top bits; AUTIA checks it and restores the pointer,
// or (without FEAT_FPAC) leaves it non-canonical so that using it faults (SIGSEGV), or (with
// FEAT_FPAC) faults at once (SIGILL). Bit 53 lies in the code's field for every VA size up to
// 52 bits and with or without top-byte-ignore, so flipping it always corrupts the code.

static const uint64_t pac_target = 0xfeedfacecafe0001UL;

struct signed_ptr {
    uint64_t signed_ptr;
    uint64_t modifier;
    uint64_t value;
};

// AUTIA, then a load through the result.
static void auth_and_load(void *arg) {
    struct signed_ptr *s = arg;
    uint64_t p = s->signed_ptr;
    asm volatile("autia %0, %1" : "+r"(p) : "r"(s->modifier));
    s->value = *(volatile const uint64_t *)p;
}

static void check_pac(void) {
    if (!(getauxval(AT_HWCAP) & HWCAP_PACA)) {
        report(0, "pac", "the kernel reports no address authentication (HWCAP_PACA clear)");
        return;
    }
    // With top-byte-ignore the code has only 7 bits (54:48), so one signature is the plain
    // pointer once in 128; four modifiers make a false "no signature" one in 2^28. A disabled
    // PAuth (SCTLR_EL1.EnIA clear: PACIA and AUTIA do nothing) leaves all four unchanged.
    const uint64_t plain = (uintptr_t)&pac_target, modifier = 0x5eed;
    uint64_t signed_ptrs[4];
    int signature_seen = 0;
    for (int i = 0; i < 4; i++) {
        signed_ptrs[i] = plain;
        asm volatile("pacia %0, %1" : "+r"(signed_ptrs[i]) : "r"(modifier + i));
        signature_seen |= signed_ptrs[i] != plain;
    }
    struct signed_ptr good = {signed_ptrs[0], modifier, 0};
    struct fault f_good = guarded(auth_and_load, &good);
    struct signed_ptr corrupt = {signed_ptrs[0] ^ (1UL << 53), modifier, 0};
    struct fault f_corrupt = guarded(auth_and_load, &corrupt);

    int good_works = f_good.signo == 0 && good.value == pac_target;
    int corrupt_faults = f_corrupt.signo == SIGSEGV || f_corrupt.signo == SIGILL;
    report(signature_seen && good_works && corrupt_faults, "pac", "%#lx signed %#lx%s; authentic pointer: %s; corrupted code: %s (want SIGSEGV or SIGILL)",
           (unsigned long)plain, (unsigned long)signed_ptrs[0], signature_seen ? "" : " (no modifier changed the pointer)",
           good_works ? "ok" : signal_name(f_good.signo), signal_name(f_corrupt.signo));
}

// ---- timer -------------------------------------------------------------------------------

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

// ---- sve=BYTES ---------------------------------------------------------------------------
//
// FEAT_SVE: Z0..Z31 of VL bytes. Each process has its own VL (PR_SVE_SET_VL, at most the
// machine's: here the VM's, which EL2 gives with ZCR_EL2). The registers must hold what the
// process wrote however often the vCPU leaves its CPU meanwhile.

#ifndef HWCAP_SVE
#define HWCAP_SVE (1UL << 22)
#endif
#ifndef PR_SVE_SET_VL
#define PR_SVE_SET_VL 50
#endif
#define PR_SVE_VL_MASK 0xffff
#define SVE_ARCH_VL_MAX 256

#define SVE_FILL(n) "dup z" #n ".b, %w[seed]\n\tadd %w[seed], %w[seed], #1\n\t"
#define SVE_STORE(n) "str z" #n ", [%[out], #" #n ", mul vl]\n\t"
#define SVE_8(m, a, b, c, d, e, f, g, h) m(a) m(b) m(c) m(d) m(e) m(f) m(g) m(h)

// Fills Z<n> with seed + n in every byte, spins until the virtual counter has moved `ticks`,
// stores Z0..Z31 at `out` (32 x VL bytes). Returns the vector length (RDVL), in bytes.
static uint64_t sve_hold(unsigned seed, uint64_t ticks, uint8_t *out) {
    uint64_t vl;
    asm volatile(".arch_extension sve\n\t"
                 SVE_8(SVE_FILL, 0, 1, 2, 3, 4, 5, 6, 7) SVE_8(SVE_FILL, 8, 9, 10, 11, 12, 13, 14, 15)
                 SVE_8(SVE_FILL, 16, 17, 18, 19, 20, 21, 22, 23) SVE_8(SVE_FILL, 24, 25, 26, 27, 28, 29, 30, 31)
                 "isb\n\t"
                 "mrs x9, cntvct_el0\n\t"
                 "add x9, x9, %[ticks]\n"
                 "1:\tmrs x10, cntvct_el0\n\t"
                 "cmp x10, x9\n\t"
                 "b.lo 1b\n\t"
                 SVE_8(SVE_STORE, 0, 1, 2, 3, 4, 5, 6, 7) SVE_8(SVE_STORE, 8, 9, 10, 11, 12, 13, 14, 15)
                 SVE_8(SVE_STORE, 16, 17, 18, 19, 20, 21, 22, 23) SVE_8(SVE_STORE, 24, 25, 26, 27, 28, 29, 30, 31)
                 "rdvl %[vl], #1\n\t"
                 ".arch_extension nosve"
                 : [vl] "=r"(vl), [seed] "+r"(seed)
                 : [ticks] "r"(ticks), [out] "r"(out)
                 : "x9", "x10", "cc", "memory", "v0", "v1", "v2", "v3", "v4", "v5", "v6", "v7", "v8", "v9", "v10", "v11", "v12", "v13",
                   "v14", "v15", "v16", "v17", "v18", "v19", "v20", "v21", "v22", "v23", "v24", "v25", "v26", "v27", "v28", "v29", "v30",
                   "v31");
    return vl;
}

// A child: on `cpu`, at vector length `vl`, pattern from `seed`: exit status 0 if every byte
// of every Z register survived, else 1 (with a line saying where).
static int sve_child(int cpu, int vl, unsigned seed) {
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    if (sched_setaffinity(0, sizeof set, &set) != 0) {
        printf("sve: child on CPU %d: sched_setaffinity: %s\n", cpu, strerror(errno));
        return 1;
    }
    int got = prctl(PR_SVE_SET_VL, vl);
    if (got < 0 || (got & PR_SVE_VL_MASK) != vl) {
        printf("sve: child on CPU %d: PR_SVE_SET_VL(%d) = %d\n", cpu, vl, got);
        return 1;
    }
    static uint8_t z[32 * SVE_ARCH_VL_MAX];
    uint64_t cntfrq;
    asm volatile("mrs %0, cntfrq_el0" : "=r"(cntfrq));
    uint64_t rdvl = sve_hold(seed, cntfrq, z);
    if (rdvl != (uint64_t)vl) {
        printf("sve: child on CPU %d: RDVL %lu, not %d\n", cpu, (unsigned long)rdvl, vl);
        return 1;
    }
    for (int n = 0; n < 32; n++)
        for (int i = 0; i < vl; i++)
            if (z[n * vl + i] != (uint8_t)(seed + n)) {
                printf("sve: child on CPU %d: Z%d byte %d is %#x, not %#x\n", cpu, n, i, z[n * vl + i], (uint8_t)(seed + n));
                return 1;
            }
    return 0;
}

static void check_sve(const char *arg) {
    int want = arg ? atoi(arg) : 0;
    if (!(getauxval(AT_HWCAP) & HWCAP_SVE)) {
        report(0, "sve", "no HWCAP_SVE");
        return;
    }
    // The largest length this machine gives: asking for the architecture's largest gets it.
    int max = prctl(PR_SVE_SET_VL, SVE_ARCH_VL_MAX);
    if (max < 0 || (max & PR_SVE_VL_MASK) != want) {
        report(0, "sve", "largest vector length %d bytes, not %d", max < 0 ? max : max & PR_SVE_VL_MASK, want);
        return;
    }
    long cpus = sysconf(_SC_NPROCESSORS_ONLN);
    struct { int cpu, vl; unsigned seed; } kids[3] = { { 0, want, 0x10 }, { cpus > 1, want, 0x50 }, { 0, 16, 0x90 } };
    pid_t pids[3];
    for (int k = 0; k < 3; k++) {
        pids[k] = fork();
        if (pids[k] == 0)
            _exit(sve_child(kids[k].cpu, kids[k].vl, kids[k].seed));
    }
    int bad = 0;
    for (int k = 0; k < 3; k++) {
        int status = 0;
        if (pids[k] < 0 || waitpid(pids[k], &status, 0) != pids[k] || !WIFEXITED(status) || WEXITSTATUS(status) != 0)
            bad++;
    }
    report(bad == 0, "sve", "largest vector length %d bytes; Z0..Z31 intact after 1 s in 3 processes (%d, %d and 16 bytes; CPUs 0, %d, 0)%s", want, want, want,
           kids[1].cpu, bad ? ": some were not" : "");
}

static void check_timer(void) {
    // The kernel wakes the sleeper from its timer interrupt (the guest's virtual timer), so a
    // lost or stuck timer shows as a sleep that never ends or ends far too late.
    struct timespec one_second = {1, 0};
    double start = now();
    int rc = nanosleep(&one_second, NULL);
    double elapsed = now() - start;
    report(rc == 0 && elapsed >= 0.9 && elapsed <= 3.0, "timer", "nanosleep(1 s) took %.3f s of CLOCK_MONOTONIC (want 0.9 to 3)%s", elapsed,
           rc ? " and failed" : "");
}

// ---- stamp -------------------------------------------------------------------------------

// Prints CNTVCT_EL0 and CNTFRQ_EL0. Under QEMU -icount shift=0 one instruction takes 1 ns of
// virtual time, so cntvct * 1e9 / cntfrq counts instructions since the machine started (no
// offset at EL1 on bare QEMU; under the hypervisor each VM's CNTVOFF_EL2 is 0 unless the host
// sets it). The host prints where the kernel started (see tools/xtask/src/bench.rs).
static void stamp(void) {
    uint64_t cntvct, cntfrq;
    // ISB: read the counter after the instructions before it, not early (Arm ARM, D11.2.2:
    // reads of CNTVCT_EL0 can occur speculatively and out of order).
    asm volatile("isb\n\tmrs %0, cntvct_el0" : "=r"(cntvct)::"memory");
    asm volatile("mrs %0, cntfrq_el0" : "=r"(cntfrq));
    printf("PKVM-STAMP: cntvct=%lu cntfrq=%lu\n", (unsigned long)cntvct, (unsigned long)cntfrq);
}

// The measurement handover (shared-abi/src/measure.rs, `Handover`): magic, version, mode,
// measurement, two CDIs. The driver's read() gives the region's size; its contents are mmap'd.
static void check_dice(void) {
    FILE *f = fopen("/dev/open-dice0", "r");
    if (!f) {
        report(0, "dice", "no /dev/open-dice0: %s", strerror(errno));
        return;
    }
    const unsigned char *h = mmap(NULL, 4096, PROT_READ, MAP_SHARED, fileno(f), 0);
    if (h == MAP_FAILED) {
        report(0, "dice", "mmap of /dev/open-dice0: %s", strerror(errno));
        fclose(f);
        return;
    }
    uint32_t version, mode;
    memcpy(&version, h + 8, 4);
    memcpy(&mode, h + 12, 4);
    char hex[65];
    for (int i = 0; i < 32; i++)
        sprintf(hex + 2 * i, "%02x", h[16 + i]);
    int ok = memcmp(h, "PKVMDICE", 8) == 0 && version == 1 && mode == 2;
    printf("PKVM-DICE: %.8s measurement %s\n", (const char *)h, hex);
    report(ok, "dice", "handover version %u, mode %u (2: debug)", version, mode);
    munmap((void *)h, 4096);
    fclose(f);
}

// ---- blkread -----------------------------------------------------------------------------

// How many physically contiguous runs the pages of [buf, buf + len) make, from the PFNs in
// `pfn` (one per page, /proc/self/pagemap's entries: bit 63 present, bits 0..54 the frame);
// 0 if a page is absent or its frame hidden (0: not CAP_SYS_ADMIN).
static unsigned long physical_runs(const uint64_t *pfn, size_t pages) {
    const uint64_t present = 1ULL << 63, frame = (1ULL << 55) - 1;
    unsigned long runs = 0;
    for (size_t i = 0; i < pages; i++) {
        if (!(pfn[i] & present) || !(pfn[i] & frame))
            return 0;
        if (i == 0 || (pfn[i] & frame) != (pfn[i - 1] & frame) + 1)
            runs++;
    }
    return runs;
}

// A `len`-byte buffer (a multiple of the page size) for the block benchmark, and in `*runs`
// how many physically contiguous runs its pages make. The bounce through a protected VM's
// restricted DMA pool costs per physical segment of a request (a swiotlb slot search and
// release each), so a buffer whose pages happened to be scattered measured the guest's page
// allocator, not the I/O path: the same EL2 and VMM read at 0.80x and at 0.68x of the
// non-protected VM from one build to the next. So: fault in a pool many times the size, take
// the first window of physically consecutive pages in it, and give the rest back. Without one
// (or without the frames: /proc/self/pagemap shows them only to CAP_SYS_ADMIN), the pool's
// first `len` bytes and their count of runs.
static void *blk_buffer(size_t len, unsigned long *runs) {
    enum { POOL = 16 << 20, PAGE = 4096 };
    size_t pages = len / PAGE, pool_pages = POOL / PAGE;
    char *pool = mmap(NULL, POOL, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    uint64_t *pfn = calloc(pool_pages, sizeof(*pfn));
    if (pool == MAP_FAILED || !pfn) {
        free(pfn);
        return pool == MAP_FAILED ? NULL : pool;
    }
    for (size_t i = 0; i < pool_pages; i++)
        pool[i * PAGE] = 1;
    int fd = open("/proc/self/pagemap", O_RDONLY);
    ssize_t want = (ssize_t)(pool_pages * sizeof(*pfn));
    if (fd < 0 || pread(fd, pfn, (size_t)want, (off_t)((uintptr_t)pool / PAGE * sizeof(*pfn))) != want)
        memset(pfn, 0, (size_t)want);
    if (fd >= 0)
        close(fd);
    size_t at = 0;
    for (size_t i = 0; i + pages <= pool_pages; i++) {
        if (physical_runs(pfn + i, pages) == 1) {
            at = i;
            break;
        }
    }
    *runs = physical_runs(pfn + at, pages);
    free(pfn);
    if (at > 0)
        munmap(pool, at * PAGE);
    if (at + pages < pool_pages)
        munmap(pool + (at + pages) * PAGE, (pool_pages - at - pages) * PAGE);
    return pool + at * PAGE;
}

static void check_blkread(const char *dev) {
    enum { REQUEST = 256 * 1024, SECTOR = 512 };
    char path[64];
    snprintf(path, sizeof(path), "/dev/%s", dev ? dev : "");
    int fd = open(path, O_RDONLY | O_DIRECT);
    if (!dev || fd < 0) {
        report(0, "blkread", "open %s: %s", path, dev ? strerror(errno) : "no device named (blkread=DEV)");
        return;
    }
    unsigned long runs = 0;
    void *buf = blk_buffer(REQUEST, &runs);
    if (!buf) {
        report(0, "blkread", "no buffer");
        close(fd);
        return;
    }
    uint64_t total = 0, bad = 0, first_bad = 0;
    ssize_t n;
    double start = now();
    while ((n = read(fd, buf, REQUEST)) > 0) {
        // Checked after the timing's end would mean keeping the disk: checking costs a load per
        // sector, small beside the copies it checks.
        for (ssize_t off = 0; off + SECTOR <= n; off += SECTOR) {
            uint64_t want = (total + (uint64_t)off) / SECTOR, got;
            memcpy(&got, (char *)buf + off, sizeof(got));
            if (got != want && bad++ == 0)
                first_bad = want;
        }
        total += (uint64_t)n;
    }
    double elapsed = now() - start;
    int err = n < 0 ? errno : 0;
    printf("PKVM-BLK: read %lu bytes in %lu ns of CLOCK_MONOTONIC, buffer in %lu physical runs\n", (unsigned long)total, (unsigned long)(elapsed * 1e9), runs);
    report(!err && total > 0 && !bad, "blkread", "%s: %lu bytes, %.1f MiB/s, %lu bad sectors (first %lu)%s%s", path, (unsigned long)total,
           (double)total / (1 << 20) / elapsed, (unsigned long)bad, (unsigned long)first_bad, err ? "; read failed: " : "", err ? strerror(err) : "");
    munmap(buf, REQUEST);
    close(fd);
}

int main(int argc, char **argv) {
    setvbuf(stdout, NULL, _IONBF, 0);
    if (argc != 2) {
        fprintf(stderr, "usage: pkvm-check CHECK[,CHECK...] | stamp\n");
        return 2;
    }
    if (strcmp(argv[1], "stamp") == 0) {
        stamp();
        return 0;
    }
    char *save = NULL;
    for (char *c = strtok_r(argv[1], ",", &save); c; c = strtok_r(NULL, ",", &save)) {
        char *arg = strchr(c, '=');
        if (arg)
            *arg++ = 0;
        if (strcmp(c, "cpus") == 0)
            check_cpus(arg);
        else if (strcmp(c, "cpuinfo") == 0)
            check_cpuinfo(arg);
        else if (strcmp(c, "mte") == 0 && !arg)
            check_mte();
        else if (strcmp(c, "pac") == 0 && !arg)
            check_pac();
        else if (strcmp(c, "timer") == 0 && !arg)
            check_timer();
        else if (strcmp(c, "dice") == 0 && !arg)
            check_dice();
        else if (strcmp(c, "blkread") == 0)
            check_blkread(arg);
        else if (strcmp(c, "sve") == 0 && arg)
            check_sve(arg);
        else
            report(0, c, "unknown check (cpus=N, cpuinfo[=F+F...], mte, pac, timer, dice, blkread=DEV, sve=BYTES)");
    }
    if (checks_run == 0)
        report(0, "none", "no check named");
    if (checks_failed)
        printf("PKVM-CHECK: failed %d/%d\n", checks_failed, checks_run);
    else
        printf("PKVM-CHECK: passed %d/%d\n", checks_run, checks_run);
    return checks_failed ? 1 : 0;
}
