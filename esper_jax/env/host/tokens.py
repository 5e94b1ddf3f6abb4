"""Token data of the transformer host env (docs/environment.md#transformer-host): a train stream and fixed validation
windows, resident on device. Nothing is downloaded.

* ``embedded_corpus()`` (the default): procedurally generated short stories with structure a small model can learn
  and not saturate in a few steps — fixed phrasing around random names, objects, colours and places that later
  sentences must copy back (so attention over the context pays), tokenised as bytes (vocabulary 256).
* ``load(path, vocab_size)``: a text file (byte tokens); a token array ``.npy`` (1-D integers) or ``.bin``
  (uint16, what nanoGPT-style TinyStories/OpenWebText preparations write); or a directory holding such a
  ``train.bin`` and ``val.bin``. A single file's tail (``val_fraction``) is the validation split.

A training minibatch is ``batch`` random windows of ``block_size + 1`` tokens from the train stream (x = the first
``block_size``, y = the same shifted by one, upstream's 257-token chunks); validation is ``val_sequences``
non-overlapping windows from the start of the validation stream, the same for every env and step.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
from pathlib import Path

import numpy as np

from esper_jax.env.config import EnvConfig
from esper_jax.env.lm_config import BYTE_VOCAB

_NAMES = ("Lily", "Tom", "Mia", "Ben", "Sue", "Max", "Anna", "Sam", "Zoe", "Leo", "Ivy", "Jack")
_OBJECTS = ("ball", "kite", "cup", "hat", "book", "box", "drum", "boat", "car", "doll")
_COLOURS = ("red", "blue", "green", "yellow", "pink", "big", "small", "shiny")
_PLACES = ("park", "garden", "beach", "forest", "house", "school", "river", "hill")
_FEELINGS = ("happy", "sad", "scared", "tired", "proud", "angry")


def _story(rng: np.random.Generator) -> str:
    a, b = rng.choice(len(_NAMES), 2, replace=False)
    hero, friend = _NAMES[a], _NAMES[b]
    obj, colour = _OBJECTS[rng.integers(len(_OBJECTS))], _COLOURS[rng.integers(len(_COLOURS))]
    place, feeling = _PLACES[rng.integers(len(_PLACES))], _FEELINGS[rng.integers(len(_FEELINGS))]
    lines = [
        f"Once upon a time, {hero} had a {colour} {obj}.",
        f"{hero} took the {colour} {obj} to the {place}.",
        f"At the {place}, {hero} met {friend}.",
    ]
    if rng.random() < 0.5:
        lines += [f"{friend} wanted the {obj} too.", f"{hero} was {feeling}.",
                  f"Then {hero} gave the {obj} to {friend}.", f"{friend} said thank you to {hero}."]
    else:
        lines += [f"The {obj} fell into the {place}.", f"{hero} was {feeling}.",
                  f"{friend} found the {colour} {obj} and gave it back to {hero}."]
    lines.append(f"{hero} and {friend} played at the {place} all day. The end.\n")
    return " ".join(lines)


def _bytes_of(text: str) -> np.ndarray:
    return np.frombuffer(text.encode("utf-8"), np.uint8).astype(np.int32)


@dataclasses.dataclass(frozen=True, eq=False)
class TokenData:
    """A train token stream and fixed validation windows (numpy int32). Equality and hash are by content (a
    fingerprint), so two environments built on the same tokens share compiled functions."""

    train: np.ndarray  # [N_train]
    val_windows: np.ndarray  # [V, block_size + 1]
    vocab_size: int
    fingerprint: str

    @property
    def block_size(self) -> int:
        return int(self.val_windows.shape[1]) - 1

    @property
    def num_train(self) -> int:
        return int(self.train.shape[0])

    def __hash__(self) -> int:
        return hash(self.fingerprint)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, TokenData) and other.fingerprint == self.fingerprint


def from_tokens(
    train: np.ndarray, val: np.ndarray, vocab_size: int, block_size: int, val_sequences: int, source: str = "tokens"
) -> TokenData:
    """``TokenData`` from two 1-D integer token streams; ``source`` names them in errors."""
    streams = {}
    for name, stream in (("train", train), ("validation", val)):
        stream = np.asarray(stream)
        if stream.ndim != 1:
            raise ValueError(f"{source}: the {name} tokens must be a 1-D array, got shape {stream.shape}")
        if not np.issubdtype(stream.dtype, np.integer):
            raise ValueError(f"{source}: the {name} tokens must be integers, got dtype {stream.dtype}")
        if stream.size == 0:
            raise ValueError(f"{source}: the {name} tokens are empty")
        lo, hi = int(stream.min()), int(stream.max())
        if lo < 0 or hi >= vocab_size:
            raise ValueError(
                f"{source}: {name} tokens lie in [{lo}, {hi}], outside the vocabulary [0, {vocab_size}) "
                f"(env.lm.vocab_size; GPT-2 tokens need 50257)"
            )
        streams[name] = stream.astype(np.int32)
    window = block_size + 1
    if streams["train"].size < window + 1:
        raise ValueError(f"{source}: {streams['train'].size} train tokens, fewer than one window of {window} + 1")
    needed = val_sequences * window
    if streams["validation"].size < needed:
        raise ValueError(
            f"{source}: {streams['validation'].size} validation tokens, fewer than env.lm.val_sequences "
            f"({val_sequences}) windows of block_size + 1 = {window} tokens ({needed})"
        )
    val_windows = streams["validation"][:needed].reshape(val_sequences, window)
    digest = hashlib.sha1()
    for array in (streams["train"], val_windows):
        digest.update(str(array.shape).encode())
        digest.update(np.ascontiguousarray(array).tobytes())
    digest.update(str(vocab_size).encode())
    return TokenData(streams["train"], val_windows, int(vocab_size), digest.hexdigest())


def embedded_corpus(
    block_size: int, val_sequences: int, vocab_size: int = BYTE_VOCAB, train_stories: int = 3000, seed: int = 0
) -> TokenData:
    """The built-in byte-level story corpus (about 0.7 MB of train tokens; validation from its own stories)."""
    rng = np.random.default_rng(seed)
    train = "".join(_story(rng) for _ in range(train_stories))
    val_rng = np.random.default_rng(seed + 1)
    val_stories = max(16, -(-val_sequences * (block_size + 1) // 200) + 1)  # a story is over 200 bytes
    val = "".join(_story(val_rng) for _ in range(val_stories))
    return from_tokens(_bytes_of(train), _bytes_of(val), vocab_size, block_size, val_sequences, "embedded corpus")


def _read_tokens(path: Path) -> np.ndarray:
    if path.suffix == ".npy":
        return np.load(path, allow_pickle=False)
    if path.suffix == ".bin":
        return np.memmap(path, dtype=np.uint16, mode="r")  # read lazily: a large file is usually capped
    return np.frombuffer(path.read_bytes(), np.uint8)


def load(
    path: str, vocab_size: int, block_size: int, val_sequences: int, val_fraction: float, max_train_tokens: int = 0
) -> TokenData:
    """Tokens from ``path`` (env.lm.data_path): a directory with nanoGPT's ``train.bin`` / ``val.bin``, a ``.npy``
    or ``.bin`` token array, or any other file read as UTF-8/bytes text (byte tokens). ``max_train_tokens`` > 0
    keeps the first that many train tokens."""
    p = Path(path).expanduser()
    if not p.exists():
        raise FileNotFoundError(f"env.lm.data_path {path!r} does not exist")
    if p.is_dir():
        files = [p / "train.bin", p / "val.bin"]
        missing = [str(f) for f in files if not f.is_file()]
        if missing:
            raise FileNotFoundError(f"env.lm.data_path {path!r} is a directory without nanoGPT's {missing}")
        for f in files:
            if f.stat().st_size == 0:
                raise ValueError(f"env.lm.data_path: {f} is empty")
        train, val = (_read_tokens(f) for f in files)
    else:
        if p.stat().st_size == 0:
            raise ValueError(f"env.lm.data_path {path!r} is empty")
        tokens = np.asarray(_read_tokens(p))
        if tokens.ndim != 1:
            raise ValueError(f"env.lm.data_path {path!r}: a token array must be 1-D, got shape {tokens.shape}")
        n_val = max(int(round(tokens.size * val_fraction)), val_sequences * (block_size + 1))
        if n_val >= tokens.size:
            raise ValueError(
                f"env.lm.data_path {path!r}: {tokens.size} tokens leave nothing to train on after "
                f"{n_val} validation tokens (env.lm.val_sequences × (block_size + 1) or env.lm.val_fraction)"
            )
        train, val = tokens[:-n_val], tokens[-n_val:]
    if max_train_tokens:
        train = train[:max_train_tokens]
    val = val[: val_sequences * (block_size + 1)]  # only the windows scored are kept
    return from_tokens(train, val, vocab_size, block_size, val_sequences, f"env.lm.data_path {path!r}")


@functools.lru_cache(maxsize=4)
def _embedded(block_size: int, val_sequences: int, vocab_size: int) -> TokenData:
    return embedded_corpus(block_size, val_sequences, vocab_size)


def for_config(cfg: EnvConfig) -> TokenData:
    """The tokens ``cfg.lm`` names, windows of the task's ``block_size`` (the embedded corpus is built once)."""
    lm, block, vocab = cfg.lm, cfg.task_spec.block_size, cfg.lm.vocab(cfg.task_spec.num_classes)
    if not lm.data_path:
        return _embedded(block, lm.val_sequences, vocab)
    return load(lm.data_path, vocab, block, lm.val_sequences, lm.val_fraction, lm.max_train_tokens)
