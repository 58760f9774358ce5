"""`make bench`: every benchmark of the project, each printing its table.

Figures are measured in one run against a baseline in the same run (Mosquitto for
the broker), since these machines are noisy; compare ratios, not absolute numbers.
Pass a benchmark's own options after its name: ``python -m bench broker --qos0 5000``.
"""

from __future__ import annotations

import importlib
import sys

BENCHES = {
    "broker": "bench.broker_bench",
    "transfer": "bench.transfer_bench",
    "detector": "bench.detector_bench",
    "training": "bench.training_bench",
    "cloud": "bench.cloud_bench",
    "edge": "bench.edge_bench",
    "scale": "bench.scale_bench",
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    names = [argv.pop(0)] if argv and argv[0] in BENCHES else list(BENCHES)
    rc = 0
    for name in names:
        print(f"\n== {name} ==", flush=True)
        rc |= importlib.import_module(BENCHES[name]).main(argv)
    return rc


if __name__ == "__main__":
    sys.exit(main())
