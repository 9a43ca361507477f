"""Run one fuzz target under atheris (libFuzzer): ``python fuzz/run.py TARGET [libFuzzer flags...]``.

The target's seeds (fuzz/targets.py ``seeds``: the test vectors) are written to ``fuzz/corpus/TARGET`` (kept
between runs, ignored by git; ``FUZZ_CORPUS=dir`` puts it elsewhere) and the gateway's modules are instrumented
for coverage. Examples:

    python fuzz/run.py http1 -max_total_time=60          # what `make fuzz FUZZ_SECONDS=60` runs per target
    python fuzz/run.py config -runs=100000
    python fuzz/run.py chunked fuzz/crash-...             # replay one input

A finding (an exception other than the ones the target allows, a differential mismatch, a hang past -timeout)
stops the run with the input saved as ``crash-*`` / ``timeout-*`` in the working directory.
"""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

import atheris

HERE = Path(__file__).resolve().parent
# -max_len per target
DEFAULTS = {"http1": 4096, "chunked": 4096, "config": 8192, "rules": 512, "jwt": 4096, "h2head": 4096,
            "sse": 4096}


def main(argv: list[str]) -> None:
    if len(argv) < 2 or argv[1] not in DEFAULTS:
        sys.exit(f"usage: {argv[0]} {{{','.join(DEFAULTS)}}} [libFuzzer flags] [corpus dirs or inputs]")
    name, rest = argv[1], argv[2:]
    sys.path.insert(0, str(HERE))
    with atheris.instrument_imports(include=["a3s_gateway"]):
        import targets

        target = targets.load(name)
    replay = [a for a in rest if not a.startswith("-") and Path(a).is_file()]
    corpus: list[str] = []
    if not replay:
        seed_dir = Path(os.environ.get("FUZZ_CORPUS", HERE / "corpus")) / name
        seed_dir.mkdir(parents=True, exist_ok=True)
        for seed in targets.seeds(name):
            (seed_dir / hashlib.sha1(seed).hexdigest()).write_bytes(seed)
        corpus = [str(seed_dir)]
    flags = [f"-max_len={DEFAULTS[name]}", "-timeout=10", "-rss_limit_mb=2048", "-print_final_stats=1"]
    atheris.Setup([argv[0], *flags, *rest, *corpus], target)
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv)
