"""Where one rollout step's time goes at small batch on CPU: ``python -m bench.profile_step [--envs 4]``.

Three measurements, evidence for the rollout gap analysis (bench/README.md); not part of the suite:

* the single matmuls of the policy step (batch ``envs``) in JAX (jitted; alone and inside a 150-step scan) and
  torch (inference_mode) side by side;
* ``--stream``: weight-streaming bandwidth of a scan whose body multiplies by k [512, 2048] kernels (k × 4.2 MB in
  float32, half in bf16): where the working set leaves the cache, a small-batch step becomes a DRAM read;
* ``--trace``: the rollout scan's time per step by XLA op (``jax.profiler`` with per-thunk trace events), float32
  and bf16 matmuls. The profiler's own traffic evicts the cache, so its absolute times are inflated for working
  sets that would otherwise stay cached; read the shares, and take step times from the rollout benchmark.
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

from bench import common

# (name, in, out) of the policy step's matmuls at the default sizes (3 slots, 512 wide, heads 256).
MATMULS = (
    ("feature_net", 126, 512),
    ("lstm_ih", 512, 2048),
    ("lstm_hh", 512, 2048),
    ("head_l0 (x7)", 512, 256),
    ("blueprint_l0", 512, 512),
    ("value_l0", 518, 256),
)


STEPS = 150


def _median(fn, reps: int = 200) -> float:
    fn()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def weight_streaming(num_envs: int, dtype: str, counts=(1, 2, 3, 4, 6, 8)) -> list[dict]:
    """µs per step and GB/s of a scan that multiplies a [envs, 512] state by k [512, 2048] kernels per step."""
    rng = np.random.default_rng(0)
    rows = []
    for k in counts:
        kernels = [jnp.asarray(rng.standard_normal((512, 2048)) * 0.02, dtype) for _ in range(k)]
        xs = jnp.asarray(rng.standard_normal((STEPS, num_envs, 512)), jnp.float32)

        @jax.jit
        def scan(kernels, xs):
            def step(h, x):
                y = x + h
                for w in kernels:
                    y = jnp.tanh(jnp.dot(y.astype(w.dtype), w, preferred_element_type=jnp.float32)[:, :512])
                return y, y.sum()

            return jax.lax.scan(step, jnp.zeros((num_envs, 512)), xs)

        per_step = _median(lambda: jax.block_until_ready(scan(kernels, xs)), reps=15) / STEPS
        megabytes = k * 512 * 2048 * jnp.dtype(dtype).itemsize / 1e6
        rows.append({"probe": "weight_streaming", "dtype": dtype, "kernels": k, "weight_MB": round(megabytes, 1),
                     "us_per_step": per_step * 1e6, "GB_per_s": megabytes / 1e3 / per_step})
    return rows


def trace_rollout(num_envs: int, matmul_dtype: str | None, top: int = 12) -> list[dict]:
    """Per-op µs per step of the rollout scan, from a jax.profiler trace with XLA's per-thunk events."""
    from bench import rollout

    jitted, call_args, kwargs, *_ = rollout.build_jax(num_envs, matmul_dtype=matmul_dtype)
    compiled = jitted.lower(*call_args, **kwargs).compile()
    jax.block_until_ready(compiled(*call_args))
    calls = 3
    with tempfile.TemporaryDirectory() as directory:
        with jax.profiler.trace(directory, create_perfetto_trace=True):
            for _ in range(calls):
                jax.block_until_ready(compiled(*call_args))
        (path,) = glob.glob(os.path.join(directory, "**", "*.trace.json.gz"), recursive=True)
        with gzip.open(path) as handle:
            events = json.load(handle)["traceEvents"]
    totals: collections.Counter[str] = collections.Counter()
    for event in events:
        if event.get("ph") == "X":
            totals[event["name"]] += event["dur"]
    per_step = {name: us / (calls * STEPS) for name, us in totals.items()}
    whole = per_step.get("ThunkExecutor::Execute", float("nan"))
    ops = [(n, us) for n, us in per_step.items() if "fusion" in n or n.startswith(("while", "copy", "dot"))]
    hlo = compiled.as_text()
    rows = []
    for name, us in sorted(ops, key=lambda item: -item[1])[:top]:
        rows.append({"probe": "trace", "matmul_dtype": matmul_dtype or "float32", "op": name, "us_per_step": us,
                     "share_of_step": us / whole, "dot": _dot_shape(hlo, name)})
    return rows


def _dot_shape(hlo: str, fusion: str) -> str | None:
    """``[m, k] x [k, n]`` of the dot a fusion computes, read off the optimised HLO; None if it has no dot."""
    lines = hlo.splitlines()
    called = next((ln.split("calls=%", 1)[1].split(",", 1)[0] for ln in lines
                   if ln.strip().startswith(f"%{fusion} = ") and "calls=%" in ln), None)
    if called is None:
        return None
    inside = False
    for line in lines:
        if line.startswith(f"%{called} "):
            inside = True
        elif inside and line.startswith("}"):
            return None
        elif inside and " dot(" in line:
            args = line.split(" dot(", 1)[1].split(")", 1)[0].split(", ")
            shapes = [next((ln.split(" = ", 1)[1].split("{", 1)[0] for ln in lines
                            if ln.strip().startswith(f"{a.strip()} = ")), "?") for a in args]
            return " x ".join(shapes)
    return None


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.profile_step")
    parser.add_argument("--envs", type=int, default=4)
    parser.add_argument("--torch-threads", type=int, default=None)
    parser.add_argument("--stream", action="store_true", help="weight-streaming bandwidth vs working-set size")
    parser.add_argument("--trace", action="store_true", help="per-op profile of the rollout scan (f32 and bf16)")
    args = parser.parse_args()
    if args.trace:  # XLA reads its flags when the backend starts, which host_info() below does
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_cpu_enable_xprof_traceme=true").strip()
    common.configure_torch_threads(args.torch_threads)
    print(f"# host: {common.host_info()}")
    if args.stream or args.trace:
        rows = []
        if args.stream:
            rows += weight_streaming(args.envs, "float32") + weight_streaming(args.envs, "bfloat16")
        if args.trace:
            rows += trace_rollout(args.envs, None) + trace_rollout(args.envs, "bfloat16")
        for row in rows:
            print(json.dumps(row), flush=True)
        return
    torch = common.setup_torch()
    rng = np.random.default_rng(0)
    for name, n_in, n_out in MATMULS:
        x = rng.standard_normal((args.envs, n_in), np.float32)
        w = rng.standard_normal((n_in, n_out), np.float32)
        xj, wj = jnp.asarray(x), jnp.asarray(w)
        dot = jax.jit(lambda a, b: a @ b)
        jax_s = _median(lambda: dot(xj, wj).block_until_ready())
        # The same matmul as the body of a 150-step scan: its cost inside compiled code, without the per-call
        # Python dispatch that the line above includes (and that the rollout scan does not pay per step).
        xs = jnp.asarray(rng.standard_normal((STEPS, args.envs, n_in), np.float32))
        scan = jax.jit(lambda xs, w: jax.lax.scan(lambda c, x: (c, x @ w), 0.0, xs)[1])
        in_scan = _median(lambda: scan(xs, wj).block_until_ready(), reps=30) / STEPS
        row = {"op": name, "envs": args.envs, "shape": [n_in, n_out], "jax_call_us": jax_s * 1e6,
               "jax_in_scan_us": in_scan * 1e6}
        if torch is not None:
            xt, wt = torch.from_numpy(x), torch.from_numpy(w)
            with torch.inference_mode():
                row["torch_us"] = _median(lambda: xt @ wt) * 1e6
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
