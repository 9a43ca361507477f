"""Instructions per proxied exchange, counted by callgrind (repeatable on a noisy shared machine).

    valgrind --tool=callgrind --callgrind-out-file=/dev/null .venv/bin/python bench/exchange_count.py 2000 none
    (the same with 12000: the difference / 10000 is the count per exchange; bench/README.md has a loop doing both)

Runs ``N`` keep-alive exchanges of bench/test_bench_exchange.py (fake transports, no sockets) for one benchmark
chain (``none``, a middleware name of ``_peers.BENCH_CHAIN``, or ``5``).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from test_bench_exchange import make_exchange


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 10000
    chain = sys.argv[2] if len(sys.argv) > 2 else "none"
    exchange, check = make_exchange(chain)
    for _ in range(n):
        exchange()
    check()


if __name__ == "__main__":
    main()
