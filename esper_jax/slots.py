"""Slot ids and the ordered slots of a host (``SlotConfig``): the order is the slot axis of every per-slot array.

Part of the shared vocabulary (re-exported by ``esper_jax.contracts``); imports nothing from the package.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

__all__ = ["SLOT_ALIASES", "SlotConfig", "canonical_slot_id"]

# Names of this port's first slot layout, accepted as aliases of upstream's grid ids.
SLOT_ALIASES: dict[str, str] = {"early": "r0c0", "mid": "r0c1", "late": "r0c2"}


def _parse_slot_id(slot_id: str) -> tuple[int, int]:
    """``"r{row}c{col}"`` -> (row, col); raises ValueError naming the id for anything else."""
    text = slot_id.strip().lower()
    if text.startswith("r") and "c" in text:
        row_text, col_text = text[1:].split("c", 1)
        if row_text.isdigit() and col_text.isdigit():
            return int(row_text), int(col_text)
    raise ValueError(
        f"slot id {slot_id!r} is not of the form 'r<row>c<col>' (e.g. 'r0c1') nor one of the aliases "
        f"{sorted(SLOT_ALIASES)}"
    )


def canonical_slot_id(slot_id: str) -> str:
    """Resolve an alias (early/mid/late) and validate the form; returns e.g. ``"r0c1"``."""
    if not isinstance(slot_id, str):
        raise TypeError(f"slot id must be a string, got {type(slot_id).__name__}")
    resolved = SLOT_ALIASES.get(slot_id.strip().lower(), slot_id)
    row, col = _parse_slot_id(resolved)
    return f"r{row}c{col}"


def _canonical_ids(slot_ids: Iterable[str]) -> tuple[str, ...]:
    """Canonical ids of a sequence of slot ids or aliases, refusing empty, duplicate and malformed ones."""
    if isinstance(slot_ids, str) or not isinstance(slot_ids, Iterable):
        raise TypeError(f"SlotConfig.slot_ids must be a sequence of slot id strings, got {slot_ids!r}")
    ids = tuple(canonical_slot_id(s) for s in slot_ids)
    if not ids:
        raise ValueError("SlotConfig.slot_ids must name at least one slot (got an empty sequence)")
    if len(set(ids)) != len(ids):
        raise ValueError(f"SlotConfig.slot_ids contains duplicates after resolving aliases: {ids}")
    return ids


@dataclasses.dataclass(frozen=True)
class SlotConfig:
    """The ordered slots of a host. The order (network order: row-major over r<row>c<col>) is the slot axis of
    every per-slot array: observation, features, masks, slot head and blueprint indices.

    ``slot_ids`` holds canonical ids in network order, as given: the constructor checks that and refuses anything
    else, naming the canonical order. ``SlotConfig.of`` resolves aliases (early/mid/late) and sorts first."""

    slot_ids: tuple[str, ...] = ("r0c0", "r0c1", "r0c2")

    def __post_init__(self) -> None:
        ids = _canonical_ids(self.slot_ids)
        if not isinstance(self.slot_ids, tuple):
            raise TypeError(f"SlotConfig.slot_ids must be a tuple (hashable), got {type(self.slot_ids).__name__}; "
                            f"SlotConfig.of({list(self.slot_ids)!r}) builds one")
        ordered = tuple(sorted(ids, key=_parse_slot_id))
        if self.slot_ids != ordered:
            raise ValueError(f"SlotConfig.slot_ids must be canonical ids in network order (row-major): {ordered}, "
                             f"got {self.slot_ids}; SlotConfig.of resolves aliases and sorts")

    @classmethod
    def of(cls, slot_ids: Iterable[str]) -> SlotConfig:
        """The SlotConfig of these ids given in any order and spelling (aliases resolved, sorted)."""
        return cls(tuple(sorted(_canonical_ids(slot_ids), key=_parse_slot_id)))

    @property
    def num_slots(self) -> int:
        return len(self.slot_ids)

    @classmethod
    def default(cls) -> SlotConfig:
        return cls(("r0c0", "r0c1", "r0c2"))

    @classmethod
    def for_grid(cls, rows: int, cols: int) -> SlotConfig:
        if rows < 1 or cols < 1:
            raise ValueError(f"for_grid needs rows >= 1 and cols >= 1, got rows={rows}, cols={cols}")
        return cls(tuple(f"r{r}c{c}" for r in range(rows) for c in range(cols)))

    @classmethod
    def with_num_slots(cls, num_slots: int) -> SlotConfig:
        """One row of ``num_slots`` slots (r0c0 … r0c{n-1}), the layout used for slot-count sweeps."""
        if not isinstance(num_slots, int) or num_slots < 1:
            raise ValueError(f"num_slots must be an integer >= 1, got {num_slots!r}")
        return cls.for_grid(1, num_slots)

    def index(self, slot_id: str) -> int:
        """Position of a slot id (or alias) on the slot axis."""
        canonical = canonical_slot_id(slot_id)
        try:
            return self.slot_ids.index(canonical)
        except ValueError:
            raise KeyError(f"slot {slot_id!r} is not in this SlotConfig {self.slot_ids}") from None

    def ordered(self, enabled: Iterable[str]) -> tuple[str, ...]:
        """The enabled ids in slot-axis order; unknown ids raise (upstream silently drops them)."""
        wanted = {canonical_slot_id(s) for s in enabled}
        unknown = wanted - set(self.slot_ids)
        if unknown:
            raise KeyError(f"slots {sorted(unknown)} are not in this SlotConfig {self.slot_ids}")
        return tuple(s for s in self.slot_ids if s in wanted)
