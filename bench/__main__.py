"""``python -m bench``: the benchmark suite of docs/benchmarks.md (features, rollout, update, train, compile) + scaling.

Prints one JSON line per measurement as it completes, then a markdown table; ``--out DIR`` also writes
``DIR/results.json`` and ``DIR/throughput.png``. ``--quick`` runs every benchmark at its smallest size (the test
suite's smoke test). ``--only NAME[,NAME]`` selects benchmarks; ``python -m bench.NAME`` is the same as
``--only NAME``.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
from collections.abc import Sequence

from bench import common

BENCHMARKS = ("features", "rollout", "update", "train", "scaling", "compile")


def main(argv: Sequence[str] | None = None) -> list[common.Measurement]:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    common.add_arguments(parser)
    parser.add_argument("--only", default=",".join(BENCHMARKS), help=f"comma-separated subset of {BENCHMARKS}")
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark(s) {unknown}; choose from {BENCHMARKS}")
    options = common.options_from_args(args)
    common.configure_torch_threads(options.torch_threads)

    info = common.host_info()
    print(f"# host: {info}", flush=True)
    print(f"# options: {options}", flush=True)
    rows: list[common.Measurement] = []
    started = time.perf_counter()
    for name in names:
        module = importlib.import_module(f"bench.{name}")
        bench_start = time.perf_counter()
        if name == "train":
            rows += module.run(options, previous=args.previous)
        else:
            rows += module.run(options)
        print(f"# {name}: {time.perf_counter() - bench_start:.1f} s", flush=True)
    elapsed = time.perf_counter() - started

    title = (
        f"esper_jax vs torch reference - jax {info['jax_device']} / torch {info.get('torch_device', 'absent')}, "
        f"float32, matmul precision {info['jax_matmul_precision']}, {info['date']}"
    )
    print()
    print(f"## Results ({title}; suite {elapsed:.0f} s)")
    print()
    print(common.markdown_table(rows))
    if args.out is not None:
        path = common.write_results(args.out, rows, info, options)
        print(f"\nwrote {path}")
        png = common.plot(args.out, rows, title)
        if png is not None:
            print(f"wrote {png}")
    return rows


if __name__ == "__main__":
    main(sys.argv[1:])
