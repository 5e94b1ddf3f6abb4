"""Where one rollout step's time goes at small batch on CPU: ``python -m bench.profile_step [--envs 4]``.

Times the single matmuls of the policy step (batch ``envs``) in JAX (jitted, block_until_ready) and torch
(inference_mode) side by side, then the whole trunk step in each, so the per-op overhead of small GEMVs can be
compared directly. Evidence for the rollout gap analysis; not part of the suite.
"""

from __future__ import annotations

import argparse
import json
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


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.profile_step")
    parser.add_argument("--envs", type=int, default=4)
    parser.add_argument("--torch-threads", type=int, default=None)
    args = parser.parse_args()
    common.configure_torch_threads(args.torch_threads)
    torch = common.setup_torch()
    rng = np.random.default_rng(0)
    print(f"# host: {common.host_info()}")
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
