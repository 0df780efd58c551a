"""The engine's batched steps: sessions stepped together give what each gives alone."""

from __future__ import annotations

import threading
import time
from collections import deque

import numpy as np
import pytest

from sst.export.meta import load_meta
from sst.tracker.backends import OrtBackend
from sst.tracker.bank import MemoryBank
from sst.tracker.engine import Engine, Frame, Session
from sst.tracker.errors import InputError, Reason
from sst.tracker.instrument import InstrumentedBackend
from sst.tracker.null_backend import NullBackend
from sst.tracker.ops import NumpyOps
from sst.tracker.scheduler import QueueState, Scheduler, StepPlan, run_step, schedule
from sst.tracker.serving.loop import EngineLoop, ServerStopping
from sst.tracker.serving.sessions import (
    Request,
    ServiceConfig,
    SessionKeyError,
    SessionLimitError,
    SessionManager,
    UnknownSessionError,
)

from .synthetic import specimen

#: The documented exactness of batched steps against solo runs (FP32, CPU).
BATCH_ATOL = 1e-5


def _plan():
    """Sessions that start and end at different steps, with 1 to 5 labels, k-shot
    supports, queries of different sizes, and independent queries mixed in.

    Returns ``{name: (supports, [(step, image, independent), ...])}``: each query is
    submitted at ``step`` (a session's frames keep their order)."""
    one = specimen(0, labels=(1,))
    five = specimen(1, size=(256, 300), labels=(1, 2, 3, 4, 5))
    s2, m2 = specimen(3, shift=0.05)
    m2 = m2.copy()
    m2[m2 == 3] = 0  # label 3 absent from the second support
    kshot = [specimen(2), (s2, m2)]
    return {
        "one": ([one], [(0, specimen(10, labels=(1,))[0], False),
                        (0, specimen(11, labels=(1,), shift=0.03)[0], False),
                        (2, specimen(12, labels=(1,), shift=0.05)[0], False)]),
        "five": ([five], [(0, specimen(20, size=(200, 260), labels=(1, 2, 3, 4, 5))[0], False),
                          (1, specimen(21, size=(300, 280), labels=(1, 2, 3, 4, 5))[0],
                           False)]),
        "kshot": (kshot, [(1, specimen(30, shift=0.02)[0], False),
                          (1, specimen(31, shift=-0.02)[0], False),
                          (2, specimen(32, size=(180, 240))[0], False)]),
        "indep": ([one], [(0, specimen(40, labels=(1,))[0], True),
                          (1, specimen(41, labels=(1,), size=(200, 200))[0], True),
                          (1, specimen(42, labels=(1,))[0], True)]),
    }


def _alone(backend, plan, **opts):
    engine = Engine(backend, **opts)
    out = {}
    for name, (supports, queries) in plan.items():
        session = engine.open_session(supports)
        out[name] = [run_step(engine, [Frame(session, img, independent=ind)])[0]
                     for _, img, ind in queries]
    return out


def _together(backend, plan, **opts):
    """Sessions open at the step of their first query; every query is submitted at its
    step; the scheduler runs one step per round."""
    engine = Engine(backend, **opts)
    sched = Scheduler(engine)
    sessions: dict[str, object] = {}
    out: dict[str, list] = {name: [] for name in plan}
    steps = []
    for step in range(6):
        for name, (supports, queries) in plan.items():
            for s, img, ind in queries:
                if s != step:
                    continue
                if name not in sessions:
                    sessions[name] = engine.open_session(supports)
                sched.submit(Frame(sessions[name], img, independent=ind, tag=name))
        done = sched.step()
        steps.append([f.tag for f, _ in done])
        for frame, res in done:
            out[frame.tag].append(res)
    assert not len(sched)
    return out, steps


@pytest.fixture(scope="module")
def ort(exported_repo):
    return OrtBackend(exported_repo)


def test_stepped_together_equals_alone_fp32_memories(ort):
    plan = _plan()
    solo = InstrumentedBackend(ort)
    want = _alone(solo, plan, bf16_memories=False)
    batched = InstrumentedBackend(ort)
    got, steps = _together(batched, plan, bf16_memories=False)
    worst = 0.0
    for name in plan:
        assert len(got[name]) == len(want[name])
        for g, w in zip(got[name], want[name]):
            assert g.labels == w.labels and g.mask.shape == w.mask.shape
            worst = max(worst, float(np.abs(g.logits - w.logits).max()))
            np.testing.assert_allclose(g.object_scores, w.object_scores,
                                       atol=BATCH_ATOL)
    assert worst <= BATCH_ATOL, worst
    # the step really batched: one decoder call per step, fewer than one per frame
    frames = sum(len(q) for _, q in plan.values())
    assert batched.calls["mask_decoder"] < solo.calls["mask_decoder"]
    assert batched.items["mask_decoder"] == solo.items["mask_decoder"]
    assert max(len(s) for s in steps) >= 4 and sum(len(s) for s in steps) == frames


def test_stepped_together_bf16_memories_agree_on_pixels(ort):
    plan = _plan()
    want = _alone(ort, plan)
    got, _ = _together(ort, plan)
    for name in plan:
        for g, w in zip(got[name], want[name]):
            agree = float((g.mask == w.mask).mean())
            assert agree >= 0.999, (name, agree)


def test_scheduler_keeps_order_and_takes_one_frame_per_session(exported_repo):
    meta = load_meta(exported_repo)
    engine = Engine(NullBackend(meta))
    sched = Scheduler(engine, max_independent=2)
    img = np.zeros((20, 30, 3), np.uint8)
    support = [(img, np.pad(np.ones((4, 4), np.uint8), ((8, 8), (13, 13))))]
    a, b = engine.open_session(support), engine.open_session(support)
    for i in range(3):
        sched.submit(Frame(a, img, tag=("a", i)))
    sched.submit(Frame(b, img, tag=("b", 0)))
    for i in range(3):
        sched.submit(Frame(a, img, independent=True, tag=("ind", i)))
    steps = []
    while len(sched):
        steps.append([f.tag for f, _ in sched.step()])
    assert steps[0] == [("a", 0), ("b", 0), ("ind", 0), ("ind", 1)]
    assert steps[1] == [("a", 1), ("ind", 2)]
    assert steps[2] == [("a", 2)]
    assert a.next_frame == 1 + 3 and b.next_frame == 1 + 1  # independent frames don't advance
    with pytest.raises(ValueError, match="one sequential frame per session"):
        run_step(engine, [Frame(a, img), Frame(a, img)])


def test_memory_attention_groups_by_layout_and_respects_the_budget(exported_repo):
    meta = load_meta(exported_repo)
    backend = InstrumentedBackend(NullBackend(meta))
    engine = Engine(backend)
    img = np.zeros((20, 30, 3), np.uint8)
    two = np.zeros((20, 30), np.uint8)
    two[2:6, 2:6], two[10:14, 10:14] = 1, 2
    early, late = engine.open_session([(img, two)]), engine.open_session([(img, two)])
    run_step(engine, [Frame(early, img)])  # early now has one more memory than late
    backend.reset()
    run_step(engine, [Frame(early, img), Frame(late, img)])
    assert backend.calls["memory_attention"] == 2  # two layouts, two calls
    assert backend.calls["mask_decoder"] == 1 and backend.items["mask_decoder"] == 4
    f2 = meta.feat ** 2
    per_object = 4 * f2 * (2 * f2 + 2 * 4)  # the second layout: 2 memories, 2 pointers
    engine.attention_bytes = per_object  # room for one object per call
    backend.reset()
    run_step(engine, [Frame(late, img)])
    assert backend.calls["memory_attention"] == 2 and backend.items["memory_attention"] == 2


def test_open_sessions_batches_priming_and_names_bad_requests(exported_repo):
    meta = load_meta(exported_repo)
    backend = InstrumentedBackend(NullBackend(meta))
    engine = Engine(backend, max_labels=3, support_cache_bytes=1 << 30)
    good = specimen(0)
    other = specimen(1)
    out = engine.open_sessions([[good], [(good[0], np.zeros_like(good[1]))], [other], [good]])
    assert isinstance(out[1], InputError) and "no labels" in str(out[1])
    assert [s.labels for s in (out[0], out[2], out[3])] == [[1, 2, 3]] * 3
    # one encoder call for both distinct supports; the repeated one is primed once
    assert backend.calls["image_encoder"] == 1 and backend.items["image_encoder"] == 2
    assert backend.calls["mask_decoder"] == 1 and backend.items["mask_decoder"] == 6
    assert out[0].bank is not out[3].bank  # same cache entry, separate banks
    engine.open_sessions([[good]])
    assert backend.calls["image_encoder"] == 1 and engine.support_cache.hits == 1


def _manager(exported_repo, **limits):
    meta = load_meta(exported_repo)
    clock = [0.0]
    mgr = SessionManager(Engine(NullBackend(meta)), ServiceConfig(**limits),
                         clock=lambda: clock[0])
    return mgr, clock


def test_manager_cap_is_answered_at_once_and_failed_starts_hold_nothing(exported_repo):
    mgr, _ = _manager(exported_repo, max_sessions=2)
    good, img = specimen(0), specimen(5)[0]
    bad = (good[0], np.zeros_like(good[1]))
    out = mgr.run([Request(session_id=1, start=True, supports=[good], queries=[img]),
                   Request(session_id=2, start=True, supports=[bad]),
                   Request(session_id=3, start=True, supports=[good]),
                   Request(session_id=4, start=True, supports=[good])])
    assert not isinstance(out[0], Exception) and len(out[0][1]) == 1
    assert isinstance(out[1], InputError)  # the failed START takes no slot ...
    assert not isinstance(out[2], Exception)  # ... so this one fits
    assert isinstance(out[3], SessionLimitError) and "max_sessions=2" in str(out[3])
    assert out[3].reason is Reason.OVER_CAPACITY and out[1].reason is None
    assert len(mgr) == 2
    out = mgr.run([Request(session_id=1, end=True),
                   Request(session_id=4, start=True, supports=[good])])
    assert len(mgr) == 2 and 4 in mgr and 1 not in mgr  # END freed session 1 for session 4


def test_manager_routes_errors_and_stateless_requests(exported_repo):
    mgr, clock = _manager(exported_repo, idle_seconds=10)
    good, img = specimen(0), specimen(5)[0]
    out = mgr.run([
        Request(session_id=7, start=True, supports=[good]),
        Request(session_id=8, queries=[img]),
        Request(session_id=9, start=True, end=True, independent=True, supports=[good],
                queries=[img, img]),
        ValueError("decode failed"),
    ])
    assert isinstance(out[1], UnknownSessionError)
    labels, results, quality = out[2]
    assert labels == [1, 2, 3] and len(results) == 2 and 9 not in mgr  # stateless: kept nothing
    assert quality is None  # not asked for
    assert isinstance(out[3], ValueError)
    out = mgr.run([Request(session_id=7, supports=[good], queries=[img])])
    assert isinstance(out[0], InputError) and "only accepted on the START" in str(out[0])
    out = mgr.run([Request(session_id=7, queries=[img, img])])
    assert len(out[0][1]) == 2
    clock[0] += 11
    assert mgr.expire() == [7] and mgr.expired_total == 1
    # refusals carry their reason: expired is told apart from never known
    expired, unknown = mgr.run([Request(session_id=7, queries=[img]),
                                Request(session_id=70, queries=[img])])
    assert isinstance(expired, UnknownSessionError) and isinstance(unknown, UnknownSessionError)
    assert expired.reason is Reason.SESSION_EXPIRED and "expired after 10s idle" in str(expired)
    assert unknown.reason is Reason.UNKNOWN_SESSION
    mgr.run([Request(session_id=7, start=True, supports=[good])])  # started again: a live session
    mgr.end(7)
    (gone,) = mgr.run([Request(session_id=7, queries=[img])])
    assert gone.reason is Reason.UNKNOWN_SESSION  # ended, not expired


def test_a_session_started_with_a_key_answers_only_that_key(exported_repo):
    mgr, _ = _manager(exported_repo)
    good, img = specimen(0), specimen(5)[0]
    mgr.run([Request(session_id=5, start=True, supports=[good], key=b"s3cret")])
    intruders = mgr.run([Request(session_id=5, queries=[img]),
                         Request(session_id=5, queries=[img], key=b"guess"),
                         Request(session_id=5, end=True, key=b"guess"),
                         Request(session_id=5, start=True, supports=[good], key=b"mine")])
    assert all(isinstance(o, SessionKeyError) for o in intruders)
    assert all(o.reason is Reason.BAD_KEY for o in intruders)
    assert 5 in mgr  # not ended, not restarted by another key
    (ok,) = mgr.run([Request(session_id=5, queries=[img], key=b"s3cret")])
    assert not isinstance(ok, Exception) and len(ok[1]) == 1
    mgr.run([Request(session_id=5, end=True, key=b"s3cret")])
    assert 5 not in mgr
    mgr.run([Request(session_id=6, start=True, supports=[good])])  # no key: open (raw clients)
    (ok,) = mgr.run([Request(session_id=6, queries=[img])])
    assert not isinstance(ok, Exception)


def test_the_wire_contract_drives_configs_and_encoder():
    """One contract: the orchestrator configs and the server's encoder carry exactly its
    tensors (sst_tracker all inputs, sst_segment those it forwards)."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2 as mc

    from sst.model_repository.configs import orchestrator_config
    from sst.tracker.serving.sessions import encode_results
    from sst.tracker.serving.wire import FORWARDED_INPUTS, INPUTS, OUTPUT_NAMES

    for name, want_inputs, batch in (("sst_tracker", [t.name for t in INPUTS], 64),
                                     ("sst_segment", list(FORWARDED_INPUTS), 0)):
        cfg = text_format.Parse(orchestrator_config(name), mc.ModelConfig())
        assert [i.name for i in cfg.input] == want_inputs
        assert all(i.optional and i.allow_ragged_batch == (batch > 0) for i in cfg.input)
        assert tuple(o.name for o in cfg.output) == OUTPUT_NAMES
        assert cfg.max_batch_size == batch
    tracker_cfg = text_format.Parse(
        orchestrator_config("sst_tracker", ServiceConfig(max_sessions=8)), mc.ModelConfig())
    assert tracker_cfg.sequence_batching.oldest.max_candidate_sequences > 8
    assert [c.name for c in tracker_cfg.sequence_batching.control_input] == [
        "START", "END", "CORRID"]
    assert tuple(encode_results([1], [])) == OUTPUT_NAMES


# --------------------------------------------------------------------------- schedule


def _fake_session(k: int) -> Session:
    return Session(labels=list(range(1, k + 1)), bank=MemoryBank(7, 16), num_supports=1,
                   next_frame=1)


def _queues(state: QueueState) -> tuple:
    return ([(session_id, [id(f) for f in q]) for session_id, q in state.sequential.items()],
            [id(f) for f in state.independent])


def test_schedule_is_a_pure_function_of_the_queues_and_the_caps():
    """No model, no engine: what a step takes, from the queues alone."""
    img = np.zeros((8, 8, 3), np.uint8)
    a, b, c = _fake_session(2), _fake_session(3), _fake_session(5)
    state = QueueState()
    fa = [Frame(a, img, tag=("a", i)) for i in range(3)]
    fb = [Frame(b, img, tag=("b", 0))]
    ind = [Frame(c, img, independent=True, tag=("i", i)) for i in range(4)]
    for f in (*fa, *fb):
        state.sequential.setdefault(id(f.session), deque()).append(f)
    state.independent.extend(ind)
    before = _queues(state)
    plan = schedule(state, encode_batch=8, max_independent=3)
    again = schedule(state, encode_batch=8, max_independent=3)
    assert _queues(state) == before  # nothing moved
    assert plan == again  # same queues, same plan
    # the next frame of every session first, then independent frames within the cap
    assert [f.tag for f in plan.frames] == [("a", 0), ("b", 0), ("i", 0), ("i", 1), ("i", 2)]
    # the encoder batch of 8 has 3 free rows: later frames of the sessions, then the rest
    assert [f.tag for f in plan.prefetch] == [("a", 1), ("a", 2), ("i", 3)]
    # an object cap stops independent frames, never a session's own frame
    plan = schedule(state, encode_batch=1, max_independent=8, max_objects=10)
    assert [f.tag for f in plan.frames] == [("a", 0), ("b", 0), ("i", 0)]  # 2+3+5 objects
    assert plan.prefetch == ()
    plan = schedule(state, encode_batch=1, max_independent=8, max_objects=1)
    assert [f.tag for f in plan.frames] == [("a", 0), ("b", 0)]
    # while sessions' frames share the step, independent frames are capped apart
    plan = schedule(state, encode_batch=1, max_independent=8, shared_independent=1)
    assert [f.tag for f in plan.frames] == [("a", 0), ("b", 0), ("i", 0)]
    alone = QueueState(independent=deque(ind))
    assert len(schedule(alone, encode_batch=1, max_independent=8,
                        shared_independent=1).frames) == 4
    # alone, an independent frame runs whatever the object cap
    lone = QueueState(independent=deque(ind[:2]))
    assert [f.tag for f in schedule(lone, encode_batch=1, max_independent=8,
                                    max_objects=1).frames] == [("i", 0)]
    # frames already encoded are not encoded again, nor counted for the encoder batch
    fa[1].features = {"feat_top": np.zeros(1)}
    plan = schedule(state, encode_batch=8, max_independent=3)
    assert [f.tag for f in plan.prefetch] == [("a", 2), ("i", 3)]
    assert schedule(QueueState(), encode_batch=8, max_independent=3) == StepPlan(())


class _Faulty:
    """A backend that raises at one stage when armed: a component by name, or the
    masks made on the device (``to_masks``)."""

    def __init__(self, inner) -> None:
        self.inner, self.meta, self.armed = inner, inner.meta, None
        self.ops = _FaultyOps(self)

    def run(self, component, feeds):
        if self.armed == component:
            raise RuntimeError(f"{component} failed")
        return self.inner.run(component, feeds)


class _FaultyOps(NumpyOps):
    def __init__(self, owner: _Faulty) -> None:
        super().__init__()
        self.owner = owner

    def to_masks(self, low, labels, sizes):
        if self.owner.armed == "to_masks":
            raise RuntimeError("to_masks failed")
        return super().to_masks(low, labels, sizes)


def _snapshot(sessions, sched: Scheduler) -> tuple:
    """Everything a step may change: banks, next frames, counts, clocks, queues."""
    banks = [(sorted(s.bank.cond), [(t, id(e), id(e.maskmem)) for t, e in s.bank.recent.items()],
              s.next_frame, s.frames_seen, s.last_used) for s in sessions]
    queued = [(id(f), f.features is None) for q in sched.state.sequential.values() for f in q]
    queued += [(id(f), f.features is None) for f in sched.state.independent]
    return banks, _queues(sched.state), queued


def _submit_all(engine, sched):
    a = engine.open_session([specimen(0)])
    b = engine.open_session([specimen(1, labels=(1, 2))])
    for i in range(7):
        sched.submit(Frame(a, specimen(50 + i, shift=0.01 * i)[0], tag=("a", i)))
    for i in range(2):
        sched.submit(Frame(b, specimen(60 + i, labels=(1, 2))[0], tag=("b", i)))
        sched.submit(Frame(a, specimen(70 + i)[0], independent=True, tag=("i", i)))
    return a, b


def test_a_failing_stage_leaves_every_bank_and_queue_as_before(ort):
    want_engine = Engine(ort, bf16_memories=False, encode_batch=2)
    want_sched = Scheduler(want_engine)
    _submit_all(want_engine, want_sched)
    want = {f.tag: r for f, r in want_sched.drain()}

    faulty = _Faulty(ort)
    engine = Engine(faulty, bf16_memories=False, encode_batch=2)
    sched = Scheduler(engine)
    sessions = _submit_all(engine, sched)
    got = {}
    stages = ["image_encoder", "memory_attention", "mask_decoder", "memory_encoder",
              "to_masks"]
    for stage in stages:  # each stage fails once, at a different step
        before = _snapshot(sessions, sched)
        faulty.armed = stage
        with pytest.raises(RuntimeError, match=f"{stage} failed"):
            sched.step()  # (stages run in order: a failing step has run those before)
        assert _snapshot(sessions, sched) == before, stage
        faulty.armed = None
        got.update({f.tag: r for f, r in sched.step()})  # the same step, now it succeeds
    got.update({f.tag: r for f, r in sched.drain()})
    assert sorted(got) == sorted(want)
    for tag, w in want.items():  # the sessions went on as if nothing had failed
        np.testing.assert_array_equal(got[tag].mask, w.mask)
        np.testing.assert_allclose(got[tag].logits, w.logits, atol=BATCH_ATOL)
    assert sessions[0].next_frame == 1 + 7 and sessions[1].next_frame == 1 + 2


def test_fail_drops_a_step_and_the_frames_that_depend_on_it(exported_repo):
    engine = Engine(NullBackend(load_meta(exported_repo)))
    sched = Scheduler(engine)
    img = np.zeros((20, 30, 3), np.uint8)
    support = [(img, np.pad(np.ones((4, 4), np.uint8), ((8, 8), (13, 13))))]
    a, b = engine.open_session(support), engine.open_session(support)
    fa = [sched.submit(Frame(a, img, tag=("a", i))) for i in range(2)]
    fb = sched.submit(Frame(b, img, tag=("b", 0)))
    ind = sched.submit(Frame(b, img, independent=True, tag=("i", 0)))
    plan = sched.schedule()
    assert set(map(id, sched.fail(plan))) == {id(fa[0]), id(fa[1]), id(fb), id(ind)}
    assert not len(sched) and a.next_frame == b.next_frame == 1


def test_requests_join_one_scheduler_and_are_answered_when_their_own_frames_are_done(
        exported_repo):
    mgr, _ = _manager(exported_repo)
    good, img = specimen(0), specimen(5)[0]
    big = Request(session_id=1, start=True, end=True, independent=True, supports=[good],
                  queries=[img] * 12)
    assert mgr.admit([big, Request(session_id=2, start=True, supports=[good])], ["big", "s2"]) \
        == [("s2", ([1, 2, 3], [], None))]  # a START alone is answered at once
    mgr.scheduler.max_independent = 2
    answered: list = []
    answered += mgr.step()
    # a session frame admitted while the stateless request runs joins the next step
    assert mgr.admit([Request(session_id=2, queries=[img])], ["frame"]) == []
    answered += mgr.step()
    assert [t for t, _ in answered] == ["frame"]  # answered long before the big one
    while mgr.pending:
        answered += mgr.step()
    assert [t for t, _ in answered] == ["frame", "big"]
    assert len(answered[1][1][1]) == 12


def test_a_failed_step_fails_its_requests_only_and_the_session_goes_on(exported_repo):
    meta = load_meta(exported_repo)
    faulty = _Faulty(NullBackend(meta))
    mgr = SessionManager(Engine(faulty), ServiceConfig())
    good, img = specimen(0), specimen(5)[0]
    mgr.run([Request(session_id=1, start=True, supports=[good])])
    faulty.armed = "memory_encoder"  # sequential frames only reach it
    (failed,) = mgr.run([Request(session_id=1, queries=[img, img])])
    assert isinstance(failed, RuntimeError) and mgr.pending == 0
    assert mgr.session(1).next_frame == 1  # the bank did not move
    faulty.armed = None
    (ok,) = mgr.run([Request(session_id=1, queries=[img])])
    assert len(ok[1]) == 1 and mgr.session(1).next_frame == 2


def _answers_until(count: int):
    """An engine loop's ``answer`` callback that records ``(token, outcome)`` pairs, and
    the event it sets once ``count`` have come."""
    answers: list = []
    done = threading.Event()

    def answer(token, outcome):
        answers.append((token, outcome))
        if len(answers) == count:
            done.set()

    return answers, done, answer


def test_the_engine_loop_answers_each_request_when_it_is_done(exported_repo):
    mgr, _ = _manager(exported_repo)
    mgr.scheduler.max_independent = 1
    good, img = specimen(0), specimen(5)[0]
    answers, done, answer = _answers_until(4)
    loop = EngineLoop(mgr, answer, idle_wait=0.05)
    try:
        loop.submit([Request(session_id=3, start=True, supports=[good])], ["start"])
        loop.submit([Request(session_id=9, start=True, end=True, independent=True, supports=[good],
                             queries=[img] * 40)], ["big"])
        loop.submit([Request(session_id=3, queries=[img]), Request(session_id=4, queries=[img])],
                    ["frame", "unknown"])
        assert done.wait(60)
    finally:
        loop.stop()
    order = [t for t, _ in answers]
    assert order.index("frame") < order.index("big") and order[-1] == "big"
    outcome = dict(answers)
    assert isinstance(outcome["unknown"], UnknownSessionError)
    assert len(outcome["frame"][1]) == 1 and len(outcome["big"][1]) == 40
    assert loop.steps >= 40  # one independent frame per step, as capped

    # stopping: what was admitted finishes (within the timeout), what comes later is
    # answered at once with a reason to send it again
    answers.clear()
    loop = EngineLoop(mgr, answer, idle_wait=0.05)
    loop.submit([Request(session_id=9, start=True, end=True, independent=True, supports=[good],
                         queries=[img] * 3)], ["admitted"])
    loop.stop(timeout=30)
    loop.submit([Request(session_id=3, queries=[img])], ["late"])
    outcome = dict(answers)
    assert len(outcome["admitted"][1]) == 3 and isinstance(outcome["late"], ServerStopping)


def test_quality_passes_go_through_the_same_scheduler(ort):
    from sst.tracker.quality import QualityScorer

    engine = Engine(ort, bf16_memories=False)
    mgr = SessionManager(engine, ServiceConfig())
    good = specimen(0)
    queries = [specimen(80 + i, shift=0.02 * i)[0] for i in range(2)]
    mgr.run([Request(session_id=1, start=True, supports=[good])])
    answered = mgr.admit([Request(session_id=1, queries=queries, quality=True)], ["q"])
    assert answered == []
    steps = []
    while mgr.pending:
        steps.append(len(mgr.scheduler.schedule().frames))
        answered += mgr.step()
    ((token, (labels, results, quality)),) = answered
    # forward frames first (one per step: a session), then the 2 x 1 reverse passes
    assert steps == [1, 1, 2] and quality.shape == (2, 3)
    want = QualityScorer(engine, [good])(queries, [r.mask for r in results])
    np.testing.assert_allclose(quality, [[w[lab] for lab in labels] for w in want],
                               atol=1e-6)
    (empty,) = mgr.run([Request(session_id=1, quality=True)])
    assert empty[2].shape == (0, 3)


def test_a_request_whose_admission_fails_is_answered_and_leaves_nothing_queued(exported_repo):
    """A fault inside admission (here a query that is still encoded bytes, which the
    orchestrator never lets through) answers that request with the error, once, drops
    whatever of it was queued, and the loop goes on serving the others."""
    mgr, _ = _manager(exported_repo)
    good, img = specimen(0), specimen(5)[0]
    answers, done, answer = _answers_until(2)
    loop = EngineLoop(mgr, answer, idle_wait=0.05)
    try:
        loop.submit([Request(session_id=9, start=True, end=True, independent=True, supports=[good],
                             queries=[img, b"\x89PNG not decoded"])], ["broken"])
        loop.submit([Request(session_id=8, start=True, end=True, independent=True, supports=[good],
                             queries=[img])], ["fine"])
        assert done.wait(60)
        time.sleep(0.2)  # (an answer sent twice would arrive here)
    finally:
        loop.stop()
    outcome = dict(answers)
    assert [t for t, _ in answers].count("broken") == 1 and len(answers) == 2
    assert isinstance(outcome["broken"], Exception)
    assert len(outcome["fine"][1]) == 1
    assert mgr.pending == 0


def test_stepped_together_equals_alone_within_bf16_precision(sam2_tiny):
    """The exactness rule for a lower-precision engine: batched across sessions equals
    solo within the gate ``--engine auto`` holds that engine to (BF16 matrix products
    round differently at different batch sizes, so bit-equality is not the rule)."""
    from sst.tracker.engine_choice import GATE, gate_check
    from sst.tracker.torch_backend import TorchBackend

    backend = TorchBackend(sam2_tiny, precision="bf16")
    plan = _plan()
    want = _alone(backend, plan)
    got, _ = _together(backend, plan)
    for name in plan:
        for g, w in zip(got[name], want[name]):
            assert g.labels == w.labels and g.mask.shape == w.mask.shape
            check = gate_check(list(g.logits), list(w.logits))
            assert check["max_abs_logit"] <= GATE["max_abs_logit"], (name, check)
            assert check["agreement"] >= GATE["min_agreement"], (name, check)
