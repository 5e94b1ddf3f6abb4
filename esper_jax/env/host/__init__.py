"""The host-network oracle of the Esper environment (docs/environment.md#interface, #blueprints, #blending,
#counterfactual-validation, #signals-and-observation, #oracles).

Modules: ``data`` (digits and CIFAR-10 loaders, ``from_arrays``/``from_uint8`` for any other image set),
``cifar_files`` (CIFAR-10's official pickle files), ``augment`` (random crop + flip on device), ``cnn`` (the host CNN and shared
layers), ``blueprints`` (the 7 CNN seeds over a per-slot parameter union), ``blend`` (ADD / MULTIPLY / GATE and the
gate network), ``oracle`` (``HostOracle``: training, fused validation, gradient statistics).

Transformer topology (issue 19): ``transformer`` (the host), ``transformer_blueprints`` (the 7 transformer seeds,
the sequence gate, blending without isolation), ``tokens`` (embedded corpus and token files), ``lm_oracle``
(``LMOracle``).
"""

from esper_jax.env.host.cifar_files import CifarFilesError
from esper_jax.env.host.data import Dataset, DeviceData, from_arrays, from_uint8, load_cifar10, load_digits
from esper_jax.env.host.oracle import HostOracle, HostState

__all__ = [
    "CifarFilesError", "Dataset", "DeviceData", "HostOracle", "HostState", "from_arrays", "from_uint8",
    "load_cifar10", "load_digits",
]
