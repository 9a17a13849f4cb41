"""The job queue and the runners that execute jobs. No FastAPI here.

The event loop only submits, cancels and reads jobs. One thread per runner takes jobs from the queue in order:
a ``ThreadRunner`` generates on that thread, in this process (the native layer releases the GIL while it
waits), loading a model included, so nothing blocks the loop; a ``ProcessRunner`` (``_process``) hands the job
to a worker process of its own (``--workers N``), since the core keeps callbacks in process globals and so
generates in parallel only in separate processes.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import logging
import math
import os
import threading
import time
import uuid
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np

from .. import Cancelled
from .._png import encode_png

log = logging.getLogger("sdcpp_py.server")
FINISHED = ("done", "failed", "cancelled")
PREVIEW_SIDE = 256  # preview frames are shrunk to at most this many pixels a side
SUPERSEDED = ("superseded", None)  # in Job.events, a preview frame a later one replaced; readers skip it


class QueueFull(Exception):
    def __init__(self, retry_after: int):
        super().__init__("the queue is full")
        self.retry_after = retry_after


class Stopping(Exception):
    """The server is stopping: it takes no more jobs."""


class _Stop(Exception):
    """Raised from the progress callback of a job cancelled before the core call began."""


class Job:
    """One generation: its keywords, its state and the events a client can follow. Events are appended on
    a runner's thread and read on the loop, which ``loop.call_soon_threadsafe`` wakes. An event keeps its
    index (readers follow the list by index); only a preview frame's is overwritten, with SUPERSEDED."""

    def __init__(self, prompt: str, options: Dict[str, Any], loop: asyncio.AbstractEventLoop, *,
                 model=None, preview: bool = False, keep: bool = True):
        self.id = uuid.uuid4().hex
        self.prompt, self.options, self.model = prompt, options, model
        self.preview, self.keep = preview, keep
        self.state = "queued"
        self.step, self.steps = 0, 0
        self.seconds_per_step = 0.0
        self.error: Optional[str] = None
        self.error_kind: Optional[str] = None
        self.seed: Optional[int] = None
        self.images: List[bytes] = []  # PNG files
        self.created = time.time()
        self.started: Optional[float] = None
        self.cancel_requested = False
        self.worker: Optional[int] = None  # the index of the runner that ran it
        self.latest_preview: Optional[str] = None  # base64 PNG
        self.events: List[tuple] = []
        self._last_preview: Optional[int] = None  # the index of the latest preview frame in events
        self._loop = loop
        self.changed = asyncio.Event()
        self.finished = loop.create_future()

    def emit(self, name: str, data: Dict[str, Any]) -> None:
        if name == "progress":
            self.step, self.steps = data["step"], data["steps"]
            self.seconds_per_step = data["seconds_per_step"]
        elif name == "preview":
            self.latest_preview = data["image"]
            if not self.keep:  # no event stream reads it: keep the latest frame only
                return
            # A kept job stays in memory a while: its latest frame only (a stream behind skips older frames).
            if self._last_preview is not None:
                self.events[self._last_preview] = SUPERSEDED
            self._last_preview = len(self.events)
        self.events.append((name, data))
        self._call_soon(self.changed.set)

    def finish(self, state: str, data: Dict[str, Any]) -> None:
        self.state = state
        self.emit(state, data)
        self._call_soon(lambda: self.finished.done() or self.finished.set_result(state))

    def _call_soon(self, callback) -> None:
        try:
            self._loop.call_soon_threadsafe(callback)
        except RuntimeError:  # the loop is closed: nobody is listening any more
            pass


@dataclass
class Outcome:
    """How a job ended: ``state`` one of FINISHED; ``kind`` of a failure: invalid (the request, found late),
    load, core, worker (the process died) or internal."""

    state: str
    error: Optional[str] = None
    kind: Optional[str] = None
    seed: Optional[int] = None
    images: List[bytes] = field(default_factory=list)  # PNG files


class Attempt:
    """One run of a job, as the thread running it and a thread cancelling it share it."""

    def __init__(self):
        self._lock = threading.Lock()
        self.cancel_requested = False
        self._context = None

    def attach(self, context) -> None:
        with self._lock:
            self._context = context

    def cancel(self) -> None:
        with self._lock:
            self.cancel_requested = True
            if self._context is not None:
                self._context.cancel()  # stops within the current step


def parameters_text(prompt: str, options: Dict[str, Any], components: Dict[str, Any], seed: int,
                    size: Tuple[int, int]) -> str:
    """The PNG "parameters" text, as ``sdcpp generate`` writes it."""
    from .._params import IMAGE
    from ..cli import _parameters_text

    values = IMAGE.bind(options, "generate")
    return _parameters_text(SimpleNamespace(prompt=prompt, context=components), values, seed, size)


def _small(frame: np.ndarray) -> np.ndarray:
    stride = max(1, math.ceil(max(frame.shape[:2]) / PREVIEW_SIDE))
    return np.ascontiguousarray(frame[::stride, ::stride])


def _first_line(error: BaseException) -> str:
    return str(error).splitlines()[0] if str(error) else type(error).__name__


def run_job(models, model, prompt: str, options: Dict[str, Any], preview: bool,
            emit: Callable[[str, Dict[str, Any]], None], attempt: Attempt) -> Outcome:
    """Generate one job on this thread with ``model``'s context from ``models`` (loaded now if it is not):
    the one generation step of both runners, in this process or in a worker process."""

    def on_progress(step: int, steps: int, seconds: float) -> None:
        if attempt.cancel_requested:
            raise _Stop()
        emit("progress", {"step": step, "steps": steps, "seconds_per_step": seconds})

    def on_preview(step: int, frames: np.ndarray, is_noisy: bool) -> None:
        if attempt.cancel_requested:
            raise _Stop()
        emit("preview", {"step": step, "image": base64.b64encode(encode_png(_small(frames[0]))).decode("ascii")})

    if not model.loaded:
        emit("loading", {"model": model.name})
    try:
        context = models.context(model)
    except Exception as error:  # a file changed since startup, out of memory, ...: this job fails
        message = _first_line(error)
        log.error("model %r could not be loaded: %s", model.name, message)
        return Outcome("failed", f"model {model.name!r} could not be loaded: {message}", "load")
    attempt.attach(context)
    call = dict(options, progress=on_progress)
    if preview:
        call["preview"] = on_preview
    try:
        if attempt.cancel_requested:
            raise _Stop()
        result = context.generate(prompt, **call)
    except (Cancelled, _Stop):
        return Outcome("cancelled")
    except (TypeError, ValueError, OSError) as error:  # checked before queueing; a file may have gone since
        return Outcome("failed", str(error), "invalid")
    except Exception as error:  # SdcppError: the core failed
        return Outcome("failed", str(error), "core")
    finally:
        attempt.attach(None)
    size = (result[0].shape[1], result[0].shape[0])
    images = [encode_png(picture, {"parameters": parameters_text(prompt, options, model.components,
                                                                 result.seed + index, size)})
              for index, picture in enumerate(result)]
    return Outcome("done", seed=result.seed, images=images)


class ThreadRunner:
    """Runs each job on the calling thread, in this process, with the contexts of ``models``."""

    kind = "thread"

    def __init__(self, models):
        self.models = models
        self.index = 0
        self._attempt: Optional[Attempt] = None

    def prepare(self, stopping: Callable[[], bool]) -> None:
        pass

    def wants_start(self) -> bool:
        return False

    def execute(self, job: Job, attempt: Attempt) -> Outcome:
        return run_job(self.models, job.model, job.prompt, job.options, job.preview, job.emit, attempt)

    def stop(self, timeout: float) -> None:
        pass

    def info(self) -> Dict[str, Any]:
        return {"index": self.index, "kind": self.kind, "pid": os.getpid()}


class Worker:
    """A bounded FIFO of jobs in front of its runners: one ``ThreadRunner`` over ``models`` by default, or the
    given ones (``ProcessRunner``s: one worker process each). A job goes to whichever runner is free first."""

    def __init__(self, models, queue_size: int, keep_finished: int = 100, runners: Optional[list] = None):
        self.models = models
        self.runners = runners or [ThreadRunner(models)]
        for index, runner in enumerate(self.runners):
            runner.index = index
        self.queue_size = queue_size
        self.keep_finished = keep_finished
        self.jobs: "collections.OrderedDict[str, Job]" = collections.OrderedDict()
        self._running: Dict[int, Tuple[Job, Attempt]] = {}  # runner index -> its job
        self._queue: "collections.deque[Job]" = collections.deque()
        self._lock = threading.Condition()
        self._stopping = False
        self._seconds = 0.0  # a running mean of job durations, for Retry-After
        self._finished_ids: "collections.deque[str]" = collections.deque()
        self._threads = [threading.Thread(target=self._run, args=(runner,), daemon=True,
                                          name=f"sdcpp-server-worker-{runner.index}") for runner in self.runners]

    @property
    def running(self) -> Optional[Job]:
        """The job running longest, if any (A1111's progress shows one)."""
        jobs = self.running_jobs()
        return jobs[0] if jobs else None

    def running_jobs(self) -> List[Job]:
        with self._lock:
            jobs = [job for job, _ in self._running.values()]
        return sorted(jobs, key=lambda job: job.started or 0.0)

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Cancel what is queued and running, stop the runners and wait for their threads."""
        with self._lock:
            self._stopping = True
            queued = list(self._queue)
            self._queue.clear()
            self._lock.notify_all()
        for job in queued:
            job.finish("cancelled", {"reason": "the server is stopping"})
        for job in self.running_jobs():
            self.cancel(job)
        deadline = time.monotonic() + timeout
        for runner in self.runners:
            runner.stop(max(1.0, deadline - time.monotonic()))
        for thread in self._threads:
            if thread.is_alive():
                thread.join(max(0.1, deadline - time.monotonic()))

    # -- the loop's side -------------------------------------------------------------------------------
    def submit(self, job: Job) -> int:
        """Queue ``job``; its position (0: next). QueueFull when the queue holds ``queue_size`` jobs."""
        with self._lock:
            if self._stopping:
                raise Stopping()
            # A job waits only if every runner is busy: queue_size counts the jobs beyond the runners.
            waiting = len(self._queue) + len(self._running)
            if waiting >= self.queue_size + len(self.runners):
                raise QueueFull(max(1, math.ceil(self._seconds * waiting / len(self.runners))))
            self._queue.append(job)
            if job.keep:
                self.jobs[job.id] = job
            position = len(self._queue) - 1
            job.emit("queued", {"id": job.id, "position": position})
            self._lock.notify()
        return position

    def position(self, job: Job) -> Optional[int]:
        with self._lock:
            for index, queued in enumerate(self._queue):
                if queued is job:
                    return index
        return None

    def queued(self) -> int:
        return len(self._queue)

    def cancel(self, job: Job) -> None:
        """A queued job is removed; a running one is stopped within the current step."""
        with self._lock:
            if job.state in FINISHED:
                return
            job.cancel_requested = True
            removed = job in self._queue
            if removed:
                self._queue.remove(job)
            else:
                attempt = next((attempt for running, attempt in self._running.values() if running is job), None)
        if removed:
            self._finished(job, Outcome("cancelled"))
        elif attempt is not None:
            attempt.cancel()

    def interrupt(self) -> Optional[Job]:
        """Cancel the running jobs (A1111's interrupt); the longest running, if any."""
        jobs = self.running_jobs()
        for job in jobs:
            self.cancel(job)
        return jobs[0] if jobs else None

    # -- the runners' threads ------------------------------------------------------------------------------
    def _run(self, runner) -> None:
        while True:
            try:
                runner.prepare(lambda: self._stopping)  # (re)starts a worker process that is not running
            except BaseException:
                log.exception("worker %d could not start", runner.index)
            with self._lock:
                # Woken by a job, a stop, or each second to see whether its worker process died while idle.
                while not self._queue and not self._stopping and not runner.wants_start():
                    self._lock.wait(1.0)
                if self._stopping:
                    return
                if not self._queue:
                    continue
                job = self._queue.popleft()
                attempt = Attempt()
                job.started, job.worker = time.time(), runner.index
                self._running[runner.index] = (job, attempt)
            job.state = "running"
            job.steps = job.options.get("steps") or 0
            job.emit("running", {"id": job.id, "worker": runner.index})
            if job.cancel_requested:
                attempt.cancel()
            try:
                outcome = runner.execute(job, attempt)
            except BaseException:  # never let a job end the thread: the server would hang
                log.exception("job %s", job.id)
                outcome = Outcome("failed", "internal error", "internal")
            with self._lock:
                self._running.pop(runner.index, None)
            if outcome.state == "done":
                duration = time.time() - job.started
                self._seconds = duration if not self._seconds else 0.7 * self._seconds + 0.3 * duration
            self._finished(job, outcome)

    def _finished(self, job: Job, outcome: Outcome) -> None:
        if outcome.state == "failed":
            job.error, job.error_kind = outcome.error, outcome.kind
            data: Dict[str, Any] = {"error": outcome.error}
        elif outcome.state == "done":
            job.seed, job.images = outcome.seed, outcome.images
            data = {"seed": job.seed, "images": [base64.b64encode(image).decode("ascii") for image in job.images]}
        else:
            data = {}
        job.finish(outcome.state, data)
        with self._lock:
            if not job.keep:
                return
            self._finished_ids.append(job.id)
            # Finished jobs stay readable for a while; the oldest go first.
            while len(self._finished_ids) > self.keep_finished:
                self.jobs.pop(self._finished_ids.popleft(), None)
