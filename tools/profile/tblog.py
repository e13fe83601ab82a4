#!/usr/bin/env python3
"""Instruction profiles from QEMU translation-block logs, for finding where an exit path's
instructions go (docs/benchmarks.md). Reads a log written with

    -d nochain,exec,in_asm -dfilter <code ranges> -D LOG

(one `IN:` block per translation, one `Trace N:` line per execution; `nochain` makes every
execution appear) and answers three questions:

    tblog.py cycles LOG ELF... [--at SYMBOL[+OFF]] [--min N] [--top K] [--cpu C] [-v]
        the most common sequences between two executions of one address (default: the host's
        hypercall vector, el2_vectors+0x400), each counted per function (-v: in order)
    tblog.py lines LOG ELF... --func NAME [--at ...] [--rank R] [--cpu C]
        the R-th most common such sequence, NAME's instructions per source line (addr2line -i)
    tblog.py totals LOG ELF... [--per N] [--top K]
        every function's instructions over the whole log, divided by N (e.g. the iterations)

ELF: the images whose code the log covers (EL2's `boot`, the host's `el1-host`, a guest),
with symbols. The log is parsed once into LOG.pickle. Under `-icount` the counts are exact;
a TB is taken to be its instructions in a row (QEMU ends a TB at every branch).
"""
import argparse, bisect, collections, os, pickle, subprocess, sys


def parse(log):
    cache = log + '.pickle'
    if os.path.exists(cache) and os.path.getmtime(cache) >= os.path.getmtime(log):
        return pickle.load(open(cache, 'rb'))
    size = {}  # translated block (host pointer) -> (guest pc, instructions)
    seqs = collections.defaultdict(list)  # cpu -> [(pc, instructions)]
    pcs, inblock = None, False
    with open(log, 'rb') as f:
        for line in f:
            if line.startswith(b'Trace'):
                parts = line.split()
                cpu, ptr = int(parts[1][:-1]), parts[2]
                if inblock:
                    # The first execution follows the block's translation.
                    size[ptr] = (pcs[0], len(pcs))
                    inblock = False
                if ptr in size:
                    seqs[cpu].append(size[ptr])
            elif line.startswith(b'IN:'):
                inblock, pcs = True, []
            elif inblock and line.startswith(b'0x'):
                pcs.append(int(line.split(b':')[0], 16))
    seqs = dict(seqs)
    pickle.dump(seqs, open(cache, 'wb'))
    return seqs


class Symbols:
    def __init__(self, elfs):
        syms = []
        for elf in elfs:
            out = subprocess.run(['aarch64-linux-gnu-nm', '-C', '--defined-only', elf], capture_output=True, text=True, check=True).stdout
            for l in out.splitlines():
                parts = l.split(' ', 2)
                if len(parts) == 3 and parts[1] in 'tTwW':
                    syms.append((int(parts[0], 16), parts[2], elf))
        syms.sort()
        self.syms, self.addrs = syms, [a for a, _, _ in syms]

    def at(self, pc):
        i = bisect.bisect_right(self.addrs, pc) - 1
        return self.syms[i] if i >= 0 else (0, '?', None)

    def name(self, pc):
        return self.at(pc)[1]

    def address(self, spec):
        sym, _, off = spec.partition('+')
        for a, n, _ in self.syms:
            if n == sym:
                return a + (int(off, 0) if off else 0)
        sys.exit(f'no symbol {sym}')


def cycles(seq, at):
    starts = [i for i, (pc, _) in enumerate(seq) if pc == at]
    count, first = collections.Counter(), {}
    for a, b in zip(starts, starts[1:]):
        sig = tuple(pc for pc, _ in seq[a:b])
        count[sig] += 1
        first.setdefault(sig, a)
    return [(c, seq[first[s]:first[s] + len(s)]) for s, c in count.most_common()]


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('what', choices=['cycles', 'lines', 'totals'])
    p.add_argument('log')
    p.add_argument('elf', nargs='+')
    p.add_argument('--at', default='el2_vectors+0x400')
    p.add_argument('--cpu', type=int, default=0)
    p.add_argument('--min', type=int, default=0, help='cycles: at least this many instructions')
    p.add_argument('--top', type=int, default=8)
    p.add_argument('--rank', type=int, default=0)
    p.add_argument('--func')
    p.add_argument('--per', type=float, default=1)
    p.add_argument('-v', action='store_true')
    a = p.parse_args()
    seqs, syms = parse(a.log), Symbols(a.elf)
    if a.what == 'totals':
        for cpu, seq in sorted(seqs.items()):
            per = collections.Counter()
            for pc, n in seq:
                per[syms.name(pc)] += n
            print(f'cpu {cpu}: {sum(per.values())} instructions')
            for f, n in per.most_common(a.top):
                print(f'  {n / a.per:10.1f}  {f[:110]}')
        return
    found = [(c, seg) for c, seg in cycles(seqs.get(a.cpu, []), syms.address(a.at)) if sum(n for _, n in seg) >= a.min]
    if a.what == 'cycles':
        for c, seg in found[:a.top]:
            print(f'== {c} times, {sum(n for _, n in seg)} instructions, {len(seg)} blocks')
            runs = []
            for pc, n in seg:
                f = syms.name(pc)
                if runs and runs[-1][0] == f:
                    runs[-1][1] += n
                else:
                    runs.append([f, n])
            if a.v:
                for f, n in runs:
                    print(f'   {n:5d}  {f[:110]}')
                print('   --')
            per = collections.Counter()
            for f, n in runs:
                per[f] += n
            for f, n in per.most_common():
                print(f'   {n:5d}  {f[:110]}')
        return
    if not a.func:
        sys.exit('lines: --func NAME')
    _, seg = found[a.rank]
    pcs = [pc + 4 * i for pc, n in seg if a.func in syms.name(pc) for i in range(n)]
    if not pcs:
        sys.exit(f'{a.func}: not in that cycle')
    elf = syms.at(pcs[0])[2]
    out = subprocess.run(['aarch64-linux-gnu-addr2line', '-a', '-i', '-e', elf] + [f'{x:x}' for x in pcs], capture_output=True, text=True, check=True).stdout
    root = os.path.abspath(os.path.join(os.path.dirname(__file__), '..', '..')) + '/'
    per, order, frames = collections.Counter(), [], None

    def flush():
        if frames is None:
            return
        # The innermost frame in this tree (inlined library code is charged to its caller).
        key = next((f for f in frames if root in f), frames[0] if frames else '?')
        key = key.replace(root, '').split(' (discriminator')[0]
        per[key] += 1
        if key not in order:
            order.append(key)

    for l in out.splitlines():
        if l.startswith('0x'):
            flush()
            frames = []
        else:
            frames.append(l)
    flush()
    print(f'{len(pcs)} instructions of {a.func}, in order of first execution:')
    for k in order:
        print(f'{per[k]:5d}  {k}')


if __name__ == '__main__':
    main()
