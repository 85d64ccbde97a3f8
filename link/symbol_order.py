#!/usr/bin/env python3
"""Writes the symbol ordering file the release link uses (see link/README.md).

usage: symbol_order.py BINARY OUT CALLGRIND_FILE... [--then CALLGRIND_FILE...]...

Reads callgrind profiles (`--demangle=no --compress-strings=no --compress-pos=no`) of BINARY and
writes to OUT every function of BINARY that ran, one mangled name per line: first those of the
first group of profiles, hottest first (by their own instruction count, summed over the group),
then those of each `--then` group that no earlier group ran, the same way. Functions that never
ran are not listed: the linker places them after the listed ones.
"""

import sys
from collections import defaultdict


def costs(binary, path, totals):
    ob = None
    current = None
    skip_next = False
    with open(path, errors="replace") as f:
        for line in f:
            if skip_next:
                # The line after `calls=` is the inclusive cost of that call, not the caller's own.
                skip_next = False
                continue
            if line.startswith("ob="):
                ob = line[3:].strip()
            elif line.startswith("fn="):
                name = line[3:].strip()
                # callgrind names a recursive activation `name'2`: the same function. Addresses
                # (`0x...`) and `(below main)` are not functions of the binary.
                name = name.split("'", 1)[0]
                ours = ob == binary and name and not name.startswith(("0x", "("))
                current = name if ours else None
                if current is not None:
                    totals[current] += 0
            elif line.startswith("calls="):
                skip_next = True
            elif current is not None and (line[:1].isdigit() or line[:1] in "+-*"):
                parts = line.split()
                if len(parts) >= 2 and parts[1].isdigit():
                    totals[current] += int(parts[1])


def main():
    if len(sys.argv) < 4:
        sys.exit(__doc__)
    binary, out = sys.argv[1], sys.argv[2]
    groups = [[]]
    for arg in sys.argv[3:]:
        if arg == "--then":
            groups.append([])
        else:
            groups[-1].append(arg)
    written = set()
    with open(out, "w") as f:
        for group in groups:
            totals = defaultdict(int)
            for path in group:
                costs(binary, path, totals)
            # Hottest first; ties (the functions that ran once) in name order, for stable diffs.
            for name in sorted(totals, key=lambda n: (-totals[n], n)):
                if name not in written:
                    written.add(name)
                    f.write(name + "\n")
    print(f"{len(written)} functions from {len(groups)} group(s) of profiles written to {out}")


if __name__ == "__main__":
    main()
