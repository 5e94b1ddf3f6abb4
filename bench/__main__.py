"""``python -m bench``: the benchmark suite of docs/benchmarks.md (features, rollout, update, train, compile) + scaling.

Prints one JSON line per measurement as it completes, then a markdown table; ``--out DIR`` also writes
``DIR/results.json`` and ``DIR/throughput.png``. ``--quick`` runs every benchmark at its smallest size (the test
suite's smoke test). ``--only NAME[,NAME]`` selects benchmarks; ``python -m bench.NAME`` is the same as
``--only NAME``. ``--device-suite`` runs the accelerator-deciding rows instead (``bench/device_suite.py``).
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
    parser.add_argument("--device-suite", action="store_true",
                        help="the accelerator-deciding rows (bench/device_suite.py; < 6 min on one H100/H200), "
                        "written to bench/results/<device>-<date>/ unless --out")
    parser.add_argument("--tiny", action="store_true", help="with --device-suite: the same rows at the smallest sizes")
    args = parser.parse_args(argv)
    if args.tiny and not args.device_suite:
        parser.error("--tiny only applies to --device-suite")
    if args.device_suite:
        from bench import device_suite

        given = [flag for flag, value in (("--quick", args.quick), ("--max-envs", args.max_envs), ("--reps", args.reps),
                                          ("--budget", args.budget), ("--cap", args.cap), ("--previous", args.previous))
                 if value]
        if given:
            parser.error(f"--device-suite has fixed sizes and repetitions; drop {given} (use --tiny for small sizes)")
        device_suite.main(tiny=args.tiny, out=args.out, torch_threads=args.torch_threads)
        return []
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
