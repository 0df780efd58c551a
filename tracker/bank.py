"""The per-session memory bank and sam2's frame selection.

A session keeps, for all of its objects at once (arrays stacked over objects ``K``):

* **conditioning entries**: one per support frame, kept for the session's life;
* **recent entries**: the last ``num_maskmem - 1`` frames' memories and the last
  ``max_obj_ptrs - 1`` frames' object pointers; older ones are dropped as frames arrive,
  so the bank stays flat however many frames flow through.

:func:`select_memories` reproduces ``SAM2Base._prepare_memory_conditioned_features``
(forward tracking): which entries are attended to, their temporal slots, and the
signed distances of the object pointers. Memories are stored in bfloat16, as sam2's
video predictor stores them.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np

__all__ = ["Entry", "MemoryBank", "Selection", "select_memories", "to_bf16", "from_bf16",
           "select_closest_cond_frames"]


def to_bf16(x: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bit patterns (uint16), rounding to nearest even."""
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    rounded = u + np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1))
    return (rounded >> np.uint32(16)).astype(np.uint16)


def from_bf16(b: np.ndarray) -> np.ndarray:
    """bfloat16 bit patterns (uint16) -> float32."""
    return (b.astype(np.uint32) << np.uint32(16)).view(np.float32)


@dataclass
class Entry:
    """One frame's stored outputs for all ``K`` objects of a session.

    ``maskmem``: ``[K, M, f, f]`` bfloat16 bits (None once dropped: pointer-only entry);
    ``obj_ptr``: ``[K, C]`` float32.
    """

    maskmem: np.ndarray | None
    obj_ptr: np.ndarray

    @property
    def nbytes(self) -> int:
        return (0 if self.maskmem is None else self.maskmem.nbytes) + self.obj_ptr.nbytes


@dataclass
class MemoryBank:
    """Conditioning and recent entries of one session, bounded by the model's limits."""

    num_maskmem: int
    max_obj_ptrs: int
    cond: dict[int, Entry] = field(default_factory=dict)
    #: Keep every frame, as sam2's predictor does (for comparisons only).
    keep_all: bool = False
    recent: OrderedDict[int, Entry] = field(default_factory=OrderedDict)

    def add_cond(self, frame_idx: int, entry: Entry) -> None:
        self.cond[frame_idx] = entry
        self.recent.pop(frame_idx, None)

    def add_recent(self, frame_idx: int, entry: Entry) -> None:
        """Store a tracked frame and drop what no later frame can select."""
        self.recent[frame_idx] = entry
        self.recent.move_to_end(frame_idx)
        if self.keep_all:
            return
        mem_horizon = frame_idx - (self.num_maskmem - 2)  # memories: last num_maskmem-1
        ptr_horizon = frame_idx - (self.max_obj_ptrs - 2)  # pointers: last max_ptrs-1
        for t in list(self.recent):
            e = self.recent[t]
            if t < ptr_horizon:
                del self.recent[t]
            elif t < mem_horizon and e.maskmem is not None:
                self.recent[t] = Entry(None, e.obj_ptr)

    @property
    def num_memories(self) -> int:
        return len(self.cond) + sum(e.maskmem is not None for e in self.recent.values())

    @property
    def num_pointers(self) -> int:
        return len(self.cond) + len(self.recent)

    @property
    def nbytes(self) -> int:
        return sum(e.nbytes for e in (*self.cond.values(), *self.recent.values()))


@dataclass
class Selection:
    """What one frame attends to (before stacking): memories with temporal slots, and
    pointers with normalised signed distances."""

    memories: list[tuple[int, np.ndarray]]  # (t_pos slot, maskmem bf16 [K,M,f,f])
    pointers: list[tuple[float, np.ndarray]]  # (distance / t_diff_max, obj_ptr [K,C])


def select_closest_cond_frames(frame_idx: int, cond: dict[int, Entry],
                               max_cond: int) -> tuple[dict[int, Entry], dict[int, Entry]]:
    """sam2's ``select_closest_cond_frames``: (selected, unselected) conditioning entries."""
    if max_cond == -1 or len(cond) <= max_cond:
        return dict(cond), {}
    selected: dict[int, Entry] = {}
    before = max((t for t in cond if t < frame_idx), default=None)
    if before is not None:
        selected[before] = cond[before]
    after = min((t for t in cond if t >= frame_idx), default=None)
    if after is not None:
        selected[after] = cond[after]
    rest = sorted((t for t in cond if t not in selected), key=lambda t: abs(t - frame_idx))
    for t in rest[: max_cond - len(selected)]:
        selected[t] = cond[t]
    return selected, {t: e for t, e in cond.items() if t not in selected}


def select_memories(bank: MemoryBank, frame_idx: int, num_frames: int, *,
                    max_cond: int = -1, stride: int = 1, signed_tpos: bool = True,
                    only_past_ptrs: bool = True) -> Selection:
    """The entries a non-conditioning frame at ``frame_idx`` attends to, as sam2 selects them
    (forward tracking). ``num_frames`` is the pseudo-video's length (it caps how far back
    pointers reach and normalises their distances)."""
    selected, unselected = select_closest_cond_frames(frame_idx, bank.cond, max_cond)
    memories: list[tuple[int, np.ndarray]] = []
    for e in selected.values():
        assert e.maskmem is not None
        memories.append((0, e.maskmem))
    n = bank.num_maskmem
    for t_pos in range(1, n):
        t_rel = n - t_pos
        if t_rel == 1:
            prev = frame_idx - t_rel
        else:
            prev = ((frame_idx - 2) // stride) * stride - (t_rel - 2) * stride
        mem_entry = bank.recent.get(prev) or unselected.get(prev)
        if mem_entry is not None and mem_entry.maskmem is not None:
            memories.append((t_pos, mem_entry.maskmem))
    max_ptrs = min(num_frames, bank.max_obj_ptrs)
    t_diff_max = max(max_ptrs - 1, 1)
    pointers: list[tuple[float, np.ndarray]] = []
    for t, e in selected.items():
        if only_past_ptrs and t > frame_idx:
            continue
        d = frame_idx - t if signed_tpos else abs(frame_idx - t)
        pointers.append((d / t_diff_max, e.obj_ptr))
    for t_diff in range(1, max_ptrs):
        t = frame_idx - t_diff
        if t < 0:
            break
        ptr_entry = bank.recent.get(t) or unselected.get(t)
        if ptr_entry is not None:
            pointers.append((t_diff / t_diff_max, ptr_entry.obj_ptr))
    return Selection(memories, pointers)
