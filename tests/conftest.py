"""Test-session setup: the trainer's CLI turns on JAX's persistent compilation cache in the user's cache directory
(esper_jax/compile_cache.py); tests must not write there, so it is off unless a test points it elsewhere."""

import os

from esper_jax.compile_cache import ENV_VAR

os.environ[ENV_VAR] = "off"
