#!/bin/bash
# Host-env speed, before (bb7f111, the main this branch started from) and after (this branch), alternating per
# env count so both sides see the same machine load. Run from the repository root:
#   bash bench/results/host-speed-2026-11-29/sidebyside.sh > results.jsonl
set -e
PY=${PY:-python}
for side in before after; do rm -rf /tmp/esper_$side && mkdir -p /tmp/esper_$side; done
git archive bb7f111 esper_jax bench | tar -x -C /tmp/esper_before
git archive HEAD esper_jax bench | tar -x -C /tmp/esper_after
cp bench/host_speed.py /tmp/esper_before/bench/   # the same measuring script on both sides
for n in ${ENVS:-4 64 256}; do
  for side in before after; do
    (cd /tmp/esper_$side && nice $PY -m bench.host_speed --envs $n --steps 4 --reps 2 --label $side 2>/dev/null)
  done
done
