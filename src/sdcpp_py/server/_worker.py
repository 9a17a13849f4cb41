"""The job queue and the worker thread that owns the contexts. No FastAPI here.

The event loop only submits, cancels and reads jobs; every core call runs on the worker thread (the native
layer releases the GIL while it waits), loading a model included, so neither blocks the loop.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import logging
import math
import threading
import time
import uuid
from typing import Any, Callable, Dict, List, Optional

import numpy as np

from .. import Cancelled
from .._png import encode_png

log = logging.getLogger("sdcpp_py.server")
FINISHED = ("done", "failed", "cancelled")
PREVIEW_SIDE = 256  # preview frames are shrunk to at most this many pixels a side


class QueueFull(Exception):
    def __init__(self, retry_after: int):
        super().__init__("the queue is full")
        self.retry_after = retry_after


class _Stop(Exception):
    """Raised from the progress callback of a job cancelled before the core call began."""


class Job:
    """One generation: its keywords, its state and the events a client can follow. Events are appended on
    the worker thread and read on the loop, which ``loop.call_soon_threadsafe`` wakes."""

    def __init__(self, prompt: str, options: Dict[str, Any], loop: asyncio.AbstractEventLoop, *,
                 model=None, preview: bool = False, keep: bool = True, describe: Optional[Callable] = None):
        self.id = uuid.uuid4().hex
        self.prompt, self.options, self.model = prompt, options, model
        self.preview, self.keep, self.describe = preview, keep, describe
        self.state = "queued"
        self.step, self.steps = 0, 0
        self.error: Optional[str] = None
        self.error_kind: Optional[str] = None
        self.seed: Optional[int] = None
        self.images: List[bytes] = []  # PNG files
        self.created = time.time()
        self.started: Optional[float] = None
        self.cancel_requested = False
        self.events: List[tuple] = []
        self._loop = loop
        self.changed = asyncio.Event()
        self.finished = loop.create_future()

    def emit(self, name: str, data: Dict[str, Any]) -> None:
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


def _small(frame: np.ndarray) -> np.ndarray:
    stride = max(1, math.ceil(max(frame.shape[:2]) / PREVIEW_SIDE))
    return np.ascontiguousarray(frame[::stride, ::stride])


class Worker:
    """A bounded FIFO of jobs in front of one thread that runs each on its model's context (``models``:
    a ``_models.Models``, which loads and closes contexts on this thread, between jobs)."""

    def __init__(self, models, queue_size: int, keep_finished: int = 100):
        self.models = models
        self._context = None  # the running job's context, for cancel
        self.queue_size = queue_size
        self.keep_finished = keep_finished
        self.jobs: "collections.OrderedDict[str, Job]" = collections.OrderedDict()
        self.running: Optional[Job] = None
        self._queue: "collections.deque[Job]" = collections.deque()
        self._lock = threading.Condition()
        self._stopping = False
        self._seconds = 0.0  # a running mean of job durations, for Retry-After
        self._finished_ids: "collections.deque[str]" = collections.deque()
        self._thread = threading.Thread(target=self._run, name="sdcpp-server-worker", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Cancel what is queued and running, and wait for the thread."""
        with self._lock:
            self._stopping = True
            queued = list(self._queue)
            self._queue.clear()
            self._lock.notify_all()
        for job in queued:
            job.finish("cancelled", {"reason": "the server is stopping"})
        self.interrupt()
        if self._thread.is_alive():
            self._thread.join(timeout)

    # -- the loop's side -------------------------------------------------------------------------------
    def submit(self, job: Job) -> int:
        """Queue ``job``; its position (0: next). QueueFull when the queue holds ``queue_size`` jobs."""
        with self._lock:
            if self._stopping:
                raise QueueFull(5)
            if len(self._queue) >= self.queue_size:
                waiting = len(self._queue) + (self.running is not None)
                raise QueueFull(max(1, math.ceil(self._seconds * waiting)))
            self._queue.append(job)
            if job.keep:
                self.jobs[job.id] = job
            position = len(self._queue) - 1
            job.emit("queued", {"id": job.id, "position": position})
            self._lock.notify_all()
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
            if job in self._queue:
                self._queue.remove(job)
                removed = True
            else:
                removed = False
                if self.running is job and self._context is not None:
                    self._context.cancel()
        if removed:
            self._finished(job, "cancelled", {})

    def interrupt(self) -> Optional[Job]:
        """Cancel the running job, if any (A1111's interrupt)."""
        with self._lock:
            job = self.running
        if job is not None:
            self.cancel(job)
        return job

    # -- the worker thread -------------------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            with self._lock:
                while not self._queue and not self._stopping:
                    self._lock.wait()
                if self._stopping:
                    return
                job = self._queue.popleft()
                self.running = job
            try:
                self._execute(job)
            except BaseException:  # never let a job end the thread: the server would hang
                log.exception("job %s", job.id)
                if job.state not in FINISHED:
                    self._finished(job, "failed", {"error": "internal error"}, "internal error")
            finally:
                with self._lock:
                    self.running, self._context = None, None

    def _execute(self, job: Job) -> None:
        job.started = time.time()
        job.state = "running"
        job.steps = job.options.get("steps") or 0
        job.emit("running", {"id": job.id})

        def progress(step: int, steps: int, seconds: float) -> None:
            if job.cancel_requested:
                raise _Stop()
            job.step, job.steps = step, steps
            job.emit("progress", {"step": step, "steps": steps, "seconds_per_step": seconds})

        def preview(step: int, frames: np.ndarray, is_noisy: bool) -> None:
            if job.cancel_requested:
                raise _Stop()
            data = base64.b64encode(encode_png(_small(frames[0]))).decode("ascii")
            job.emit("preview", {"step": step, "image": data})

        model = job.model
        if not model.loaded:
            job.emit("loading", {"model": model.name})
        try:
            context = self.models.context(model)
        except Exception as error:  # a file changed since startup, out of memory, ...: this job fails
            message = str(error).splitlines()[0] if str(error) else type(error).__name__
            log.error("model %r could not be loaded: %s", model.name, message)
            self._finished(job, "failed", {"error": f"model {model.name!r} could not be loaded: {message}"}, "load")
            return
        with self._lock:
            self._context = context
        options = dict(job.options, progress=progress)
        if job.preview:
            options["preview"] = preview
        try:
            if job.cancel_requested:
                raise _Stop()
            result = context.generate(job.prompt, **options)
        except (Cancelled, _Stop):
            self._finished(job, "cancelled", {})
            return
        except (TypeError, ValueError, OSError) as error:  # checked before queueing; a file may have gone since
            self._finished(job, "failed", {"error": str(error)}, "invalid")
            return
        except Exception as error:  # SdcppError: the core failed
            self._finished(job, "failed", {"error": str(error)}, "core")
            return
        job.seed = result.seed
        size = (result[0].shape[1], result[0].shape[0])
        for index, picture in enumerate(result):
            text = job.describe(job, result.seed + index, size) if job.describe else None
            job.images.append(encode_png(picture, {"parameters": text} if text else None))
        duration = time.time() - job.started
        self._seconds = duration if not self._seconds else 0.7 * self._seconds + 0.3 * duration
        self._finished(job, "done", {"seed": job.seed, "images": [base64.b64encode(data).decode("ascii")
                                                                 for data in job.images]})

    def _finished(self, job: Job, state: str, data: Dict[str, Any], kind: Optional[str] = None) -> None:
        if state == "failed":
            job.error, job.error_kind = data.get("error"), kind
        job.finish(state, data)
        with self._lock:
            if not job.keep:
                return
            self._finished_ids.append(job.id)
            # Finished jobs stay readable for a while; the oldest go first.
            while len(self._finished_ids) > self.keep_finished:
                self.jobs.pop(self._finished_ids.popleft(), None)

