"""Every group's digest (values and coordinates of every variable, hashed), to show that a change of code
leaves a store's results as they were.

    python benchmarks/store_digests.py STORE > digests.json        # record
    python benchmarks/store_digests.py STORE --against digests.json  # compare: exit 1 on any difference

Attributes are left out (timestamps, commits and durations differ between any two runs).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import zarr

from repro.hashing import group_digest


def store_digests(store: Path) -> dict[str, str]:
    root = zarr.open_group(str(store), mode="r")
    return {name: group_digest(store, name) for name in sorted(root.group_keys()) if not name.startswith("_")}


def main(argv: list[str]) -> int:
    store = Path(argv[0])
    digests = store_digests(store)
    if "--against" not in argv:
        print(json.dumps(digests, indent=2))
        return 0
    recorded = json.loads(Path(argv[argv.index("--against") + 1]).read_text())
    differ = sorted(g for g in set(recorded) | set(digests) if recorded.get(g) != digests.get(g))
    for group in differ:
        print(f"{group}: recorded {recorded.get(group, 'absent')[:12]}, now {digests.get(group, 'absent')[:12]}")
    print(f"{len(digests) - len(differ)} of {len(set(recorded) | set(digests))} groups equal")
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
