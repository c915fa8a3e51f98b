"""Encoding work shared between connections and done in worker threads.

Connections that send the same picture with the same settings share each
rectangle's pixels-only work (``SharedWork``); large rectangles may be
prepared in worker threads.  Either way every connection's bytes must be
exactly those it would send alone: its own zlib streams still run in order.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from protocols.rfb import messages as m
from protocols.rfb import server
from protocols.rfb.client import UpdateDone
from protocols.rfb.constants import Encoding
from protocols.rfb.encodings import Rect
from protocols.rfb.sharing import Job, SharedWork
from thinserve.relay.upstream import Mirror

from .content import desktop_frame, noise_frame
from .test_connection import H, Pair, W

WHOLE = [Rect(0, y, W, 40) for y in range(0, H, 40)]  # five rectangles
PROFILES = {
    "tight-jpeg": [Encoding.TIGHT, Encoding.JPEG_QUALITY_0 + 8, Encoding.COMPRESS_LEVEL_0 + 2],
    "tight": [Encoding.TIGHT],
    "zrle": [Encoding.ZRLE],
    "hextile": [Encoding.HEXTILE],
    "zlib": [Encoding.ZLIB],
    "raw": [Encoding.RAW],
}


def ready_pair(encodings: list[int]) -> Pair:
    pair = Pair()
    pair.client.set_encodings([*encodings, Encoding.COPYRECT])
    pair.full_update()
    pair.take_client(UpdateDone)
    pair.client.request_update(incremental=False)
    pair.pump()
    pair.take_server(m.FramebufferUpdateRequest)
    return pair


def jobs_of(stream: server.UpdateStream | None) -> list[Job]:
    """The jobs of every rectangle the stream has still to send (each made
    when first needed: made now)."""
    assert stream is not None
    return [stream._job(index) for index in range(len(stream._parts))]


def picture() -> np.ndarray:
    """Windows, text and a smooth patch, noise below: every Tight method is used."""
    frame = desktop_frame(W, H, seed=11)
    frame[H * 3 // 4 :] = noise_frame(W, H - H * 3 // 4, seed=12)
    return frame


def sent_alone(encodings: list[int], frame: np.ndarray, updates: int = 2) -> bytes:
    pair = ready_pair(encodings)
    for _ in range(updates):
        pair.server.send_update(frame, WHOLE)
    return pair.server.data_to_send()


@pytest.mark.parametrize("profile", list(PROFILES))
def test_shared_work_gives_each_connection_the_bytes_it_would_send_alone(profile: str) -> None:
    frame = picture()
    expected = sent_alone(PROFILES[profile], frame)
    pairs = [ready_pair(PROFILES[profile]) for _ in range(3)]
    for _ in range(2):  # the second update runs on zlib streams the first has filled
        work = SharedWork()
        streams = [p.server.begin_update(frame, WHOLE, work=work) for p in pairs]
        for stream in streams:
            stream.send()
    for pair in pairs:
        assert pair.server.data_to_send() == expected


def test_connections_with_equal_settings_share_one_job_per_rectangle() -> None:
    frame = picture()
    work = SharedWork()
    first, second = ready_pair(PROFILES["tight-jpeg"]), ready_pair(PROFILES["tight-jpeg"])
    other = ready_pair([Encoding.TIGHT, Encoding.JPEG_QUALITY_0 + 3])
    jobs = [
        jobs_of(pair.server.begin_update(frame, WHOLE, work=work))
        for pair in (first, second, other)
    ]
    assert len(jobs[0]) > 1
    assert all(a is b for a, b in zip(jobs[0], jobs[1], strict=True))
    assert not any(a is b for a, b in zip(jobs[0], jobs[2], strict=True))  # its quality differs


def test_jobs_outlive_finished_updates_until_the_picture_changes() -> None:
    frame = picture()
    work = SharedWork()
    first, second = ready_pair(PROFILES["tight"]), ready_pair(PROFILES["tight"])
    first.server.begin_update(frame, WHOLE, work=work).send()
    stream = second.server.begin_update(frame, WHOLE, work=work)
    assert all(job.done for job in jobs_of(stream))  # the first one's work, kept
    stream.send()
    work.release()
    third = ready_pair(PROFILES["tight"])
    assert not any(job.done for job in jobs_of(third.server.begin_update(frame, WHOLE, work=work)))


@pytest.mark.parametrize("profile", ["tight-jpeg", "zrle", "hextile"])
def test_worker_threads_change_no_byte(profile: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(server, "POOL_MIN_PIXELS", 1)  # these rectangles are small
    frame = picture()
    expected = sent_alone(PROFILES[profile], frame)
    pair = ready_pair(PROFILES[profile])
    threads: set[str] = set()

    def run(job: Job) -> None:
        threads.add(threading.current_thread().name)
        job.run()

    with ThreadPoolExecutor(2, thread_name_prefix="test-encode") as pool:
        for _ in range(2):
            stream = pair.server.begin_update(frame, WHOLE, pool=lambda job: pool.submit(run, job))
            while stream.send(pixels=1):
                waiting = stream.waiting_for
                if waiting is not None:
                    waiting.result()  # a worker has it: wait for it
    assert pair.server.data_to_send() == expected
    assert any(name.startswith("test-encode") for name in threads)


def test_blank_drops_work_prepared_from_the_picture() -> None:
    frame = picture()
    work = SharedWork()
    watcher, leaver = ready_pair(PROFILES["tight"]), ready_pair(PROFILES["tight"])
    watcher.server.begin_update(frame, WHOLE, work=work).send()  # every job is done
    stream = leaver.server.begin_update(frame, WHOLE, work=work)
    stream.send(pixels=1)
    stream.blank()
    stream.send()
    leaver.pump()
    fb = leaver.client.framebuffer
    np.testing.assert_array_equal(fb[:40], frame[:40])  # the first rectangle went out
    assert not fb[40:].any()  # then black, though its pictures were prepared


def test_job_runs_once_and_hands_its_error_to_every_taker() -> None:
    calls: list[int] = []

    def fail() -> object:
        calls.append(1)
        raise ValueError("bad pixels")

    job = Job(fail)
    told: list[bool] = []
    job.when_done(lambda: told.append(True))
    for _ in range(2):
        with pytest.raises(ValueError, match="bad pixels"):
            job.result()
    assert calls == [1] and told == [True]
    job.when_done(lambda: told.append(True))  # already done: at once
    assert told == [True, True]


def test_a_taker_waits_for_the_thread_that_runs_the_job() -> None:
    gate, started = threading.Event(), threading.Event()

    def work() -> object:
        started.set()
        assert gate.wait(10)
        return "pixels"

    job = Job(work)
    runner = threading.Thread(target=job.run)
    runner.start()
    assert started.wait(10) and job.running_elsewhere
    with ThreadPoolExecutor(1) as pool:
        taken = pool.submit(job.result)
        waiting = threading.Event()
        for _ in range(1000):  # until the taker is blocked on the job (it made the job's Event)
            if job._finished is not None:
                waiting.set()
                break
            waiting.wait(0.01)
        assert waiting.is_set()
        gate.set()
        assert taken.result(timeout=10) == "pixels"
    runner.join(10)
    assert job.result() == "pixels"  # done: no waiting


def test_encode_workers_run_jobs_in_threads_and_report_back_through_the_reactor() -> None:
    from thinserve.relay.encodepool import EncodeWorkers

    back: list[str] = []
    reported = threading.Event()

    def call_from_thread(callback: object) -> None:  # the reactor's callFromThread
        back.append(threading.current_thread().name)
        assert callable(callback)
        callback()

    workers = EncodeWorkers(1, call_from_thread)
    ran: list[str] = []
    job = Job(lambda: ran.append(threading.current_thread().name))
    workers.when_done(job, reported.set)
    workers.submit(job)
    assert reported.wait(10)
    assert ran[0].startswith("encode") and back == ran  # told from the worker, via the reactor


class Recorder:
    """A listener that notes whether the previous picture's work was still
    held (not yet released) when the change reached it."""

    def __init__(self, old: SharedWork, fail: bool = False) -> None:
        self.old = old
        self.fail = fail
        self.old_held_at_update: bool | None = None

    def on_update(self, copies: object, rects: object, grid: object) -> None:
        self.old_held_at_update = self.old.record(("probe", id(self)))
        if self.fail:
            raise RuntimeError("a listener that fails")

    def on_damage(self, grid: object) -> None:
        self.on_update((), (), grid)


# A desktop's update, and damage as a scaled view or a screen announces it.
CHANGES = {
    "update": lambda mirror: mirror.updated([], [Rect(0, 0, 8, 8)]),
    "damage": lambda mirror: mirror.damaged_grid(np.ones((48, 64), dtype=bool)),
}


@pytest.mark.parametrize("change", sorted(CHANGES))
def test_the_previous_pictures_work_is_released_after_the_change_reached_the_listeners(
    change: str,
) -> None:
    mirror = Mirror("desk")
    old = mirror.work()
    recorder = Recorder(old)
    mirror.subscribe(recorder)  # type: ignore[arg-type]
    CHANGES[change](mirror)
    assert recorder.old_held_at_update is True  # not released on the way to the terminal
    assert not old.record(("after", 0))  # released once the change went round
    assert mirror.work() is not old


@pytest.mark.parametrize("change", sorted(CHANGES))
def test_the_previous_pictures_work_is_released_even_when_a_listener_fails(change: str) -> None:
    mirror = Mirror("desk")
    old = mirror.work()
    mirror.subscribe(Recorder(old, fail=True))  # type: ignore[arg-type]
    with pytest.raises(RuntimeError):
        CHANGES[change](mirror)
    assert not old.record(("after", 0))
