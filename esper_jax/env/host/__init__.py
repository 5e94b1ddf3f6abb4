"""The host-network oracle of the Esper environment (docs/environment.md#interface, #blueprints, #blending,
#counterfactual-validation, #signals-and-observation, #oracles).

Modules: ``data`` (digits loader, ``from_arrays`` for any other image set), ``cnn`` (the host CNN and shared
layers), ``blueprints`` (the 7 CNN seeds over a per-slot parameter union), ``blend`` (ADD / MULTIPLY / GATE and the
gate network), ``oracle`` (``HostOracle``: training, fused validation, gradient statistics).

Transformer topology (issue 19): ``transformer`` (the host), ``transformer_blueprints`` (the 7 transformer seeds,
the sequence gate, blending without isolation), ``tokens`` (embedded corpus and token files), ``lm_oracle``
(``LMOracle``).
"""

from esper_jax.env.host.data import Dataset, from_arrays, load_digits
from esper_jax.env.host.oracle import HostOracle, HostState

__all__ = ["Dataset", "HostOracle", "HostState", "from_arrays", "load_digits"]
