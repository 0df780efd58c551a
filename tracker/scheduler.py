"""What each engine step takes: a pure :meth:`Scheduler.schedule`, then ``commit``.

The scheduler holds the pending frames: one queue per session for sequential frames
(a session's frames depend on each other, so they go one per step, in order) and one
queue of independent frames (stateless queries, quality passes). A step is

1. ``plan = scheduler.schedule()``: a pure function of the queues and the caps (no
   model, no state changed; tested directly);
2. ``out = engine.execute(plan)``: the components run; no session is touched;
3. ``scheduler.commit(plan, out)``: the banks, next frames and queues advance.

If step 2 raises, nothing has changed: the same plan can be scheduled again, or the
failed frames dropped (:meth:`Scheduler.fail`).

Caps per step: every session with a pending frame gets its next frame in (no session
waits more than one step for another), then up to ``max_independent`` independent
frames, oldest first (``shared_independent``, one encoder batch by default, while
session frames share the step), and at most ``max_objects`` objects in all (0: no cap)
once each session has had its frame. When a step leaves room in its last encoder batch, the next
pending frames are encoded with it (prefetch: encoding does not depend on memory).
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import islice
from typing import TYPE_CHECKING, Any

from sst.tracker.result import FrameResult

if TYPE_CHECKING:  # (the engine imports the plan types from here)
    from sst.tracker.bank import Entry
    from sst.tracker.engine import Engine, Frame, Session

__all__ = ["Scheduler", "QueueState", "StepPlan", "StepOutput", "schedule", "run_step",
           "GATHER_S"]

#: A server's engine loop, woken by a request, waits this long for the others that
#: arrive with it, so that they join the same step (a batch of sessions' frames).
GATHER_S = 0.02


@dataclass(frozen=True)
class StepPlan:
    """What one engine step takes: ``frames`` (at most one sequential frame per session,
    plus independent frames) and ``prefetch``, later frames encoded in the same encoder
    calls. Made by :func:`schedule` (or given whole to :func:`run_step`)."""

    frames: tuple[Frame, ...]
    prefetch: tuple[Frame, ...] = ()


@dataclass
class StepOutput:
    """What :meth:`Engine.execute` made, not yet applied to any session: ``results`` in
    ``plan.frames`` order, ``features`` (``id(frame)`` -> (encoder outputs, seconds)) of
    every frame encoded in the step, and ``memories``, the new bank entry of each
    sequential frame."""

    results: list[FrameResult]
    features: dict[int, tuple[dict[str, Any], float]]
    memories: list[tuple[Frame, Entry]]


def run_step(engine: Engine, frames: Sequence[Frame], prefetch: Sequence[Frame] = ()
             ) -> list[FrameResult]:
    """One step over exactly ``frames`` (at most one sequential frame per session), run
    and committed: the path of callers that choose a step's frames themselves (the
    tracker's independent mode, quality passes, retrieval). ``prefetch``: later frames
    encoded in the same encoder calls. Results in ``frames`` order; if a component
    raises, no session has changed."""
    plan = StepPlan(tuple(frames), tuple(prefetch))
    return engine.commit(plan, engine.execute(plan))


@dataclass
class QueueState:
    """Pending frames: per session (``id(session)``) in order, and independent ones."""

    sequential: OrderedDict[int, deque[Frame]] = field(default_factory=OrderedDict)
    independent: deque[Frame] = field(default_factory=deque)

    def __len__(self) -> int:
        return len(self.independent) + sum(len(q) for q in self.sequential.values())


def schedule(state: QueueState, *, encode_batch: int, max_independent: int,
             max_objects: int = 0, shared_independent: int = 0) -> StepPlan:
    """The next step's plan for ``state`` (read only): the oldest pending frame of every
    session, then independent frames (at most ``max_independent``; at most
    ``shared_independent`` when > 0 and session frames are in the step, so that a large
    stateless request cannot make the sessions' steps long; and within ``max_objects``
    objects in all when > 0, but at least one when nothing else runs), and the pending
    frames without features that fill the last encoder batch."""
    frames = [q[0] for q in state.sequential.values() if q]
    objects = sum(f.session.num_objects for f in frames)
    cap = max(1, max_independent)
    if frames and shared_independent > 0:
        cap = min(cap, shared_independent)
    for f in islice(state.independent, cap):
        k = f.session.num_objects
        if max_objects and frames and objects + k > max_objects:
            break
        frames.append(f)
        objects += k
    need = sum(f.features is None for f in frames)
    room = (-need) % max(1, encode_batch)
    prefetch: list[Frame] = []
    if room:
        later = (f for q in state.sequential.values() for f in islice(q, 1, None))
        chosen = set(map(id, frames))
        rest = (f for f in state.independent if id(f) not in chosen)
        for f in (*later, *rest):
            if len(prefetch) == room:
                break
            if f.features is None:
                prefetch.append(f)
    return StepPlan(tuple(frames), tuple(prefetch))


class Scheduler:
    """The pending frames of one engine and its steps (see the module docstring)."""

    @classmethod
    def for_server(cls, engine: Engine) -> Scheduler:
        """A server's caps: its steps stay short, one encoder batch of independent frames,
        half of one while sessions' frames share the step (a session frame that arrives
        while a step of a large stateless request runs waits for that step only)."""
        return cls(engine, max_independent=engine.encode_batch,
                   shared_independent=max(1, engine.encode_batch // 2))

    def __init__(self, engine: Engine, max_independent: int = 64, max_objects: int = 0,
                 shared_independent: int | None = None) -> None:
        self.engine = engine
        self.max_independent = max(1, max_independent)
        self.max_objects = max(0, max_objects)
        #: Independent frames per step while sessions' frames run (default: one
        #: encoder batch); 0: no separate cap.
        self.shared_independent = (engine.encode_batch if shared_independent is None
                                   else max(0, shared_independent))
        self.state = QueueState()

    def submit(self, frame: Frame) -> Frame:
        if frame.independent:
            self.state.independent.append(frame)
        else:
            self.state.sequential.setdefault(id(frame.session), deque()).append(frame)
        return frame

    def __len__(self) -> int:
        return len(self.state)

    def schedule(self, state: QueueState | None = None) -> StepPlan:
        """The plan of the next step over ``state`` (default: this scheduler's queues);
        pure: nothing changes until :meth:`commit`."""
        return schedule(self.state if state is None else state,
                        encode_batch=self.engine.encode_batch,
                        max_independent=self.max_independent, max_objects=self.max_objects,
                        shared_independent=self.shared_independent)

    def _pop(self, frames: tuple[Frame, ...]) -> None:
        done = set(map(id, frames))
        if any(f.independent for f in frames):
            self.state.independent = deque(f for f in self.state.independent
                                           if id(f) not in done)
        for f in frames:
            if f.independent:
                continue
            q = self.state.sequential.get(id(f.session))
            if q and q[0] is f:
                q.popleft()
                if not q:
                    del self.state.sequential[id(f.session)]

    def commit(self, plan: StepPlan, out: StepOutput) -> list[tuple[Frame, FrameResult]]:
        """Apply a step :meth:`Engine.execute` ran: banks and sessions advance
        (:meth:`Engine.commit`) and the plan's frames leave the queues."""
        results = self.engine.commit(plan, out)
        self._pop(plan.frames)
        return list(zip(plan.frames, results))

    def fail(self, plan: StepPlan) -> list[Frame]:
        """Drop a failed step's frames and every later frame of their sessions (which
        depend on them); returns the dropped frames. The banks are as before the step."""
        dropped = [f for f in plan.frames if f.independent]
        self._pop(tuple(dropped))
        for f in plan.frames:
            if not f.independent:
                dropped += list(self.state.sequential.pop(id(f.session), ()))
        return dropped

    def step(self) -> list[tuple[Frame, FrameResult]]:
        """Run the next step; ``(frame, result)`` in step order. If a component raises,
        the exception propagates and the queues and banks are as before the step."""
        plan = self.schedule()
        if not plan.frames:
            return []
        return self.commit(plan, self.engine.execute(plan))

    def drain(self) -> Iterator[tuple[Frame, FrameResult]]:
        """Step until nothing is pending; yields ``(frame, result)`` as steps finish."""
        while len(self):
            yield from self.step()

    def cancel(self, session: Session) -> None:
        """Drop every pending frame of ``session``."""
        self.state.sequential.pop(id(session), None)
        self.state.independent = deque(f for f in self.state.independent
                                       if f.session is not session)

    def remove(self, keep: Callable[[Frame], bool]) -> list[Frame]:
        """Drop every pending frame for which ``keep`` is false; returns them."""
        gone = [f for q in self.state.sequential.values() for f in q if not keep(f)]
        gone += [f for f in self.state.independent if not keep(f)]
        ids = set(map(id, gone))
        for key in list(self.state.sequential):
            q = deque(f for f in self.state.sequential[key] if id(f) not in ids)
            if q:
                self.state.sequential[key] = q
            else:
                del self.state.sequential[key]
        self.state.independent = deque(f for f in self.state.independent if id(f) not in ids)
        return gone
