"""The host-network oracle of the Esper environment (environment.md §1, §3.1, §4.3, §4.4, §5.2, §5.3, §8.4).

Modules: ``data`` (digits loader, ``from_arrays`` for any other image set), ``cnn`` (the host CNN and shared
layers), ``blueprints`` (the 7 CNN seeds over a per-slot parameter union), ``blend`` (ADD / MULTIPLY / GATE and the
gate network), ``oracle`` (``HostOracle``: training, fused validation, gradient statistics).
"""

from esper_jax.env.host.data import Dataset, from_arrays, load_digits
from esper_jax.env.host.oracle import HostOracle, HostState

__all__ = ["Dataset", "HostOracle", "HostState", "from_arrays", "load_digits"]
