"""The PPO update beside torch's bare gradient step, both against the machine's matmul throughput:
``python -m bench.headroom [--envs 4,64] [--rounds 12] [--matmul-dtype bfloat16]``.

One process, the same weights (the torch reference's init, converted) and the same [envs × 150] batch on both
sides. Each round times one esper_jax ``ppo.update`` (obs normaliser, GAE, forward + backward through the LSTM,
clip, Adam; compiled ahead of time) and then one torch gradient step (``compute_loss`` + backward +
``clip_grad_norm_`` + Adam, GAE done beforehand: the least torch can do for the same update), alternating, so
both see the same load on a shared machine, with a pause (``SETTLE_S``) before each timed call so that neither
starts while the other's threads still spin; medians and minima over the rounds are reported, and the ratio of the
medians. Both are also put against a measured dense float32 matmul rate (square 1024 GEMMs, best of torch's and
XLA's over the same rounds), counting the update as 6 FLOPs per kernel weight per sample (2 forward, 4 backward; the usual estimate),
so the headroom left is visible.

Prints one JSON object per size and a markdown table; ``--out FILE`` also writes the JSON list. ``--gemm-shapes``
also times each distinct GEMM of the update alone (forward ``x·W``, input gradient ``dy·Wᵀ``, weight gradient
``xᵀ·dy`` of every kernel at that batch), XLA against torch, to tell a slow GEMM from slow work around the GEMMs.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from bench import common, fixtures
from bench import update as update_bench

SEQ_LEN = fixtures.SEQ_LEN
GEMM = 1024
# Pause before every timed call. torch's OpenMP worker threads spin-wait after each of its calls (libgomp's default
# wait policy), and an XLA call started right after one runs with a core taken: measured 2026-11-29 on the idle
# 2-core VM, a [600 × 512]·[512 × 256] XLA GEMM timed right after torch's ran at 101 GFLOP/s, 201 with the spinning
# switched off (OMP_WAIT_POLICY=PASSIVE, which in turn slowed torch's own update step 1.6×). A pause lets each side
# start on a quiet machine and keeps each side's own threading as it is.
SETTLE_S = 0.25
_GEMM = jax.jit(jnp.matmul)


def cpu_features() -> dict[str, bool]:
    """Whether this CPU has native bf16 arithmetic (AVX512_BF16 / AMX-BF16), read from /proc/cpuinfo (Linux);
    all False where it cannot be read: never assumed."""
    flags: set[str] = set()
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    break
    except OSError:
        pass
    return {"avx2": "avx2" in flags, "avx512f": "avx512f" in flags, "avx512_bf16": "avx512_bf16" in flags,
            "amx_bf16": "amx_bf16" in flags}


def _best_walls(a: np.ndarray, b: np.ndarray, torch: Any, rounds: int, settle_s: float) -> tuple[float, float | None]:
    """Best wall time of ``a @ b`` in XLA and in torch (None without torch) over ``rounds`` alternating rounds,
    each timed call after a pause of ``settle_s`` and an untimed call (which wakes that side's threads)."""
    xa, xb = jnp.asarray(a), jnp.asarray(b)
    xla_s, torch_s = [], []
    for _ in range(rounds):
        time.sleep(settle_s)
        _GEMM(xa, xb).block_until_ready()
        xla_s.append(_wall(lambda: _GEMM(xa, xb).block_until_ready()))
        if torch is not None:
            ta, tb = torch.from_numpy(a), torch.from_numpy(b)
            time.sleep(settle_s)
            torch.mm(ta, tb)
            torch_s.append(_wall(lambda: torch.mm(ta, tb)))
    return min(xla_s), (min(torch_s) if torch_s else None)


def matmul_rate(torch: Any, rounds: int = 5, settle_s: float = SETTLE_S) -> dict[str, float]:
    """Measured float32 GEMM rate (FLOP/s) of [GEMM × GEMM] @ [GEMM × GEMM] in torch and in XLA, best of ``rounds``
    (the side-by-side takes the best over its rounds: the least disturbed figure on a shared machine)."""
    a = np.random.default_rng(0).standard_normal((GEMM, GEMM)).astype(np.float32)
    flops = 2.0 * GEMM**3
    best_xla, best_torch = _best_walls(a, a, torch, rounds, settle_s)
    out = {"xla_flops": flops / best_xla}
    if best_torch is not None:
        out["torch_flops"] = flops / best_torch
    out["best_flops"] = max(out.values())
    return out


def _wall(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def update_flops(params: Any, samples: int) -> float:
    """6 FLOPs per kernel weight per sample: forward 2, backward 4 (input and weight gradients)."""
    from esper_jax.network import is_kernel

    weights = sum(np.size(x) for path, x in jax.tree_util.tree_leaves_with_path(params) if is_kernel(path))
    return 6.0 * weights * samples


def gemm_shapes(params: Any, rows: int) -> list[tuple[str, int, int, int]]:
    """The distinct (kind, m, k, n) GEMMs of one update at ``rows`` samples: per kernel [in, out], the forward
    [rows, in]·[in, out], the input gradient [rows, out]·[out, in] and the weight gradient [in, rows]·[rows, out].
    The recurrent kernel's per-step GEMVs are left out (their batch is the env count, not ``rows``)."""
    from esper_jax.network import is_kernel

    seen = set()
    for path, x in jax.tree_util.tree_leaves_with_path(params):
        if is_kernel(path) and np.ndim(x) == 2:
            k, n = np.shape(x)
            seen |= {("forward", rows, k, n), ("input grad", rows, n, k), ("weight grad", k, rows, n)}
    return sorted(seen, key=lambda s: (s[0], -s[1] * s[2] * s[3]))


def time_gemms(shapes: list[tuple[str, int, int, int]], torch: Any, rounds: int, settle_s: float = SETTLE_S
               ) -> list[dict[str, Any]]:
    """Each GEMM alone, XLA and torch alternating, best of ``rounds``: GFLOP/s of both."""
    rng = np.random.default_rng(0)
    out = []
    for kind, m, k, n in shapes:
        a = rng.standard_normal((m, k)).astype(np.float32)
        b = rng.standard_normal((k, n)).astype(np.float32)
        best_xla, best_torch = _best_walls(a, b, torch, rounds, settle_s)
        flop = 2.0 * m * k * n
        out.append({"kind": kind, "m": m, "k": k, "n": n, "xla_gflops": flop / best_xla / 1e9,
                    "torch_gflops": flop / best_torch / 1e9})
    return out


def side_by_side(num_envs: int, rounds: int, torch: Any, matmul_dtype: str | None) -> dict[str, Any]:
    torch_net = fixtures.torch_network(torch, fixtures.network_config())
    jitted, args, kwargs, _config, params = update_bench.build_jax(num_envs, torch_net, matmul_dtype=matmul_dtype)
    compiled = common.compile_jax(jitted, *args, **kwargs)

    torch_step = update_bench.torch_gradient_step(torch, torch_net, num_envs)

    def jax_update() -> None:
        jax.block_until_ready(compiled.fn(*args))

    jax_update()
    torch_step()  # warm-up of both
    jax_s, torch_s, gemm = [], [], []
    for _ in range(rounds):
        time.sleep(SETTLE_S)
        jax_s.append(_wall(jax_update))
        time.sleep(SETTLE_S)
        torch_s.append(_wall(torch_step))
        gemm.append(matmul_rate(torch, rounds=1))  # in the same rounds, so it sees the same load
    flops = update_flops(params, num_envs * SEQ_LEN)
    jax_med, torch_med = statistics.median(jax_s), statistics.median(torch_s)
    return {
        "envs": num_envs, "seq_len": SEQ_LEN, "rounds": rounds,
        "matmul_dtype": matmul_dtype or "float32",
        "jax_median_ms": 1e3 * jax_med, "jax_min_ms": 1e3 * min(jax_s),
        "torch_median_ms": 1e3 * torch_med, "torch_min_ms": 1e3 * min(torch_s),
        "ratio": torch_med / jax_med,  # > 1: ppo.update is faster than torch's bare step
        "ratio_of_minima": min(torch_s) / min(jax_s),
        "update_gflop": flops / 1e9,
        "jax_gflops": flops / jax_med / 1e9, "torch_gflops": flops / torch_med / 1e9,
        "compile_s": compiled.lower_s + compiled.compile_s,
        "matmul_gflops": max(g["best_flops"] for g in gemm) / 1e9,
        "xla_matmul_gflops": max(g["xla_flops"] for g in gemm) / 1e9,
        "torch_matmul_gflops": max(g["torch_flops"] for g in gemm) / 1e9,
    }


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(prog="python -m bench.headroom", description=__doc__.split("\n\n")[0])
    parser.add_argument("--envs", default="4,64", help="comma-separated env counts (default 4,64)")
    parser.add_argument("--rounds", type=int, default=12, help="alternating timed rounds per size (default 12)")
    parser.add_argument("--matmul-dtype", default=None, choices=[None, "bfloat16"],
                        help="the esper_jax side's NetworkConfig.matmul_dtype (torch stays float32)")
    parser.add_argument("--torch-threads", type=int, default=None, help="torch intra-op threads (default: one per core)")
    parser.add_argument("--single-thread", action="store_true",
                        help="one thread on both sides: torch.set_num_threads(1) and XLA's CPU backend without its "
                        "multi-threaded Eigen matmuls (--xla_cpu_multi_thread_eigen=false), for a machine whose other "
                        "load makes two-thread timings meaningless")
    parser.add_argument("--gemm-shapes", action="store_true",
                        help="also time every distinct GEMM of the update alone, XLA against torch")
    parser.add_argument("--out", default=None, help="also write the results as a JSON list here")
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error("--rounds must be >= 1")
    if args.single_thread:
        if args.torch_threads not in (None, 1):
            parser.error("--single-thread sets torch to 1 thread; drop --torch-threads")
        # read when JAX's CPU backend starts, i.e. at its first computation below, not at import
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen=false").strip()
        args.torch_threads = 1
    common.configure_torch_threads(args.torch_threads)
    torch = common.setup_torch()
    if torch is None:
        parser.error("torch is not installed: the comparison needs the torch reference (pip install esper-jax[torch])")
    features = cpu_features()
    if args.matmul_dtype == "bfloat16" and not (features["avx512_bf16"] or features["amx_bf16"]) \
            and jax.default_backend() == "cpu":
        print("# note: this CPU has no native bf16 arithmetic (no AVX512_BF16/AMX): bf16 matmuls are emulated")
    results = []
    for num_envs in (int(e) for e in args.envs.split(",")):
        row = side_by_side(num_envs, args.rounds, torch, args.matmul_dtype)
        row.update(cpu=features, torch_threads=torch.get_num_threads(), xla_single_thread=args.single_thread,
                   device=common.jax_device(),
                   jax_matmul_fraction=row["jax_gflops"] / row["matmul_gflops"],
                   torch_matmul_fraction=row["torch_gflops"] / row["matmul_gflops"])
        if args.gemm_shapes:
            params = fixtures.jax_params(fixtures.network_config(), None)
            row["gemms"] = time_gemms(gemm_shapes(params, num_envs * SEQ_LEN), torch, max(3, args.rounds))
        print(json.dumps(row), flush=True)
        results.append(row)
    print("\n| envs × T | matmuls | ppo.update median (min) | torch fwd+bwd+Adam median (min) | torch ÷ jax | "
          "jax / torch GFLOP/s | of measured GEMM rate |")
    print("|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['envs']} × {r['seq_len']} | {r['matmul_dtype']} | {r['jax_median_ms']:.1f} ({r['jax_min_ms']:.1f}) ms"
              f" | {r['torch_median_ms']:.1f} ({r['torch_min_ms']:.1f}) ms | **{r['ratio']:.2f}×** | "
              f"{r['jax_gflops']:.1f} / {r['torch_gflops']:.1f} | {r['jax_matmul_fraction']:.0%} / "
              f"{r['torch_matmul_fraction']:.0%} of {r['matmul_gflops']:.0f} GFLOP/s |")
    for r in results:
        if "gemms" in r:
            print(f"\n{r['envs']} × {r['seq_len']}: each GEMM alone, best of the rounds (GFLOP/s)\n")
            print("| GEMM | [m × k] · [k × n] | XLA | torch |\n|---|---|---|---|")
            for g in r["gemms"]:
                print(f"| {g['kind']} | [{g['m']} × {g['k']}] · [{g['k']} × {g['n']}] | {g['xla_gflops']:.0f} | "
                      f"{g['torch_gflops']:.0f} |")
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(results, fh, indent=1)
    return results


if __name__ == "__main__":
    main()
