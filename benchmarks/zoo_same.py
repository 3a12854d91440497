"""Do two zoo runs predict the same? ``python benchmarks/zoo_same.py OLD.json NEW.json``.

For every record of NEW (protocol, setting, model, method, seed) found in OLD, counts the test
images whose correctness differs, and the largest difference in MACs kept; prints one line per
method and exits 1 if NEW has a record OLD lacks. Used to show that a behaviour-preserving change
(e.g. a faster implementation) leaves the zoo's results as they were.
"""

from __future__ import annotations

import json
import sys


def key(record: dict) -> tuple:
    return tuple(record.get(k) for k in ("protocol", "setting", "model", "method", "seed"))


def main() -> None:
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    old = {key(r): r for r in json.load(open(sys.argv[1]))["records"]}
    per_method: dict[str, list[int]] = {}
    missing = 0
    for r in json.load(open(sys.argv[2]))["records"]:
        o = old.get(key(r))
        if o is None:
            print("not in OLD:", key(r))
            missing += 1
            continue
        flips = sum(a != b for a, b in zip(r["correct"], o["correct"], strict=True))
        row = per_method.setdefault(r["method"], [0, 0, 0, 0.0])
        row[0] += 1
        row[1] += flips
        row[2] += len(r["correct"])
        row[3] = max(row[3], abs(r["kept"] - o["kept"]))
    for method, (records, flips, images, kept) in sorted(per_method.items()):
        print(f"{method}: {records} records, {flips} of {images} predictions differ, largest MACs-kept difference {kept:.2e}")
    sys.exit(1 if missing else 0)


if __name__ == "__main__":
    main()
