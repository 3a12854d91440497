"""Paired interval of one method against another in a zoo run: ``python benchmarks/zoo_versus.py ZOO.json METHOD PEER``.

Prints, per setting, the zoo-mean difference with its paired 95 % bootstrap interval (over
test images and seeds, 1,000 replicates), as ``ZOO.md`` does against the best peer.
"""

from __future__ import annotations

import sys

from tp_vit_plugins.demo.zoo_report import _by, _diff, _load_records, paired_bootstrap

if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    path, method, peer = sys.argv[1:]
    rows, _ = _load_records(path)
    for (protocol, setting), methods in _by(rows).items():
        if method in methods and peer in methods:
            models = sorted(set(methods[method]) & set(methods[peer]))
            diffs = [_diff(methods[method][m], methods[peer][m]) for m in models]
            point, low, high = paired_bootstrap(diffs, 1000)
            print(f"{protocol} | {setting}: {method} - {peer} = {100 * point:+.2f} pt [{100 * low:+.2f}, {100 * high:+.2f}]")
