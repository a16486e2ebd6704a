"""``python -m dicomflow.bench ARGS...``: the same as ``dicomflow bench ARGS...``."""

import sys

from dicomflow.bench.main import run_bench

if __name__ == "__main__":
    sys.exit(run_bench(sys.argv[1:]))
