"""Worker processes (``sdcpp serve --workers N``): the server side (``ProcessRunner``) and the worker's program
(``_worker_command``: ``main`` after the signals are set), which speak over a socket pair with pickled tuples.

The core keeps its callbacks in process globals, so jobs run in parallel only in separate processes. A worker
is started with its own environment (``--devices``: ``CUDA_VISIBLE_DEVICES`` / ``GGML_VK_VISIBLE_DEVICES`` set
before it imports the package) and loads its own contexts. One that dies (killed, out of memory) fails only
the job it was running, with an error saying so, and is started again; the queue is the server's, so no other
job is lost. A worker whose server goes away exits (its end of the socket closes).

Server -> worker: ("start", spec), ("job", id, model name, prompt, options, preview), ("cancel", id), ("stop",).
Worker -> server: ("ready", info), ("event", name, data), ("loaded", names), ("finished", outcome fields).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import pickle
import queue
import signal
import site
import socket
import subprocess
import sys
import threading
import time
from multiprocessing.connection import Connection
from typing import Any, Callable, Dict, List, Optional

from ._worker import Attempt, Outcome, run_job

log = logging.getLogger("sdcpp_py.server")
DEVICE_VARIABLES = ("CUDA_VISIBLE_DEVICES", "GGML_VK_VISIBLE_DEVICES")


def model_specs(models) -> List[tuple]:
    """What a worker needs to rebuild ``models``: each model's name, Context keywords and default mark."""
    specs = []
    for model in models:
        if not model.owned:
            raise ValueError("worker processes load their own contexts: serve models given by their options "
                             "(Models.from_options or a --config file), not a loaded Context")
        specs.append((model.name, dict(model.options), model.default))
    return specs


class _RemoteCancel:
    """What ``Attempt.cancel`` calls while a job runs in a worker: a cancel message to it."""

    def __init__(self, runner: "ProcessRunner", job_id: str):
        self.runner, self.job_id = runner, job_id

    def cancel(self) -> None:
        self.runner.send(("cancel", self.job_id))


class ProcessRunner:
    """Runs jobs in one worker process of its own, started (again) when it is not running."""

    kind = "process"
    RETRY_SECONDS = 5.0  # between tries to start a worker that could not start

    def __init__(self, models, spec: Dict[str, Any], environment: Optional[Dict[str, str]] = None):
        self.models = models  # the server's, to mark which models this worker has loaded
        self.spec = spec  # {"models": model_specs(models), "max_loaded": n}
        self.environment = dict(environment or {})
        self.index = 0
        self.process: Optional[subprocess.Popen] = None
        self.restarts = -1
        self.state = "stopped"
        self.reported: Dict[str, Any] = {}
        self.last_exit: Optional[str] = None
        self._connection: Optional[Connection] = None
        self._send_lock = threading.Lock()  # every send and the close
        self._lifecycle = threading.Lock()  # starting a process against stopping
        self._stopping = False
        self._failed_at = 0.0  # when a start last failed

    # -- lifecycle (the runner's thread) -------------------------------------------------------------------
    def _running(self) -> bool:
        return self.process is not None and self.process.poll() is None and self._connection is not None

    def wants_start(self) -> bool:
        """Whether the worker is not running and may be started now (a failed start waits RETRY_SECONDS)."""
        return (not self._stopping and not self._running()
                and time.monotonic() - self._failed_at >= self.RETRY_SECONDS)

    def prepare(self, stopping: Callable[[], bool]) -> None:
        """Start the worker if it is not running (it died: record how); waits until it has loaded."""
        if stopping() or not self.wants_start():
            return
        if self.process is not None and self.state != "dead":
            self._reap()  # it died while idle
            log.error("worker %d (pid %d) %s while idle; starting it again", self.index, self.process.pid,
                      self.last_exit)
        try:
            self._start()
        except Exception as error:  # its jobs fail, each with the reason, until a start succeeds
            self._failed_at = time.monotonic()
            self._reap()
            self.last_exit = self.last_exit if isinstance(error, EOFError) else f"could not start: {error}"
            log.error("worker %d could not start: %s", self.index, self.last_exit)

    def _start(self) -> None:
        self.restarts += 1
        self.state = "starting"
        ours, theirs = socket.socketpair()
        try:
            with self._lifecycle:
                if self._stopping:
                    raise OSError("the server is stopping")
                self._close_connection()
                self.process = subprocess.Popen(_worker_command(theirs.fileno()), pass_fds=(theirs.fileno(),),
                                                env=_worker_environment(self.environment),
                                                stdin=subprocess.DEVNULL)
                with self._send_lock:
                    self._connection = Connection(ours.detach())
        finally:
            theirs.close()
            ours.close()  # nothing once detached
        self.send(("start", self.spec))
        connection = self._connection
        if connection is None:  # stopped meanwhile
            raise EOFError()
        message = connection.recv()  # EOFError: it died while starting
        self.reported = message[1]
        self._mark_loaded(self.reported.get("loaded", []))
        error = self.reported.get("error")
        self.state = "ready" if not error else "load failed"
        if error:
            log.error("worker %d: %s", self.index, error)
        log.info("worker %d started (pid %d)", self.index, self.process.pid)

    def stop(self, timeout: float) -> None:
        self._stopping = True
        with self._lifecycle:  # a start in progress has its process by now, or will not start one
            process = self.process
        self.send(("stop",))
        if process is not None:
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self._close_connection()
        self.state = "stopped"

    def _close_connection(self) -> None:
        with self._send_lock:
            connection, self._connection = self._connection, None
        if connection is not None:
            connection.close()

    def send(self, message: tuple) -> None:
        """Send to the worker; a worker that is gone is found by the runner's thread, not here."""
        with self._send_lock:
            connection = self._connection
            if connection is None:
                return
            try:
                connection.send(message)
            except OSError:
                pass

    # -- jobs ----------------------------------------------------------------------------------------
    def execute(self, job, attempt: Attempt) -> Outcome:
        if self._stopping:
            return Outcome("cancelled")
        if not self._running():
            if time.monotonic() - self._failed_at >= self.RETRY_SECONDS:
                self.prepare(lambda: False)
            if not self._running():
                return Outcome("failed", f"worker {self.index} is not running ({self.last_exit or 'not started'})",
                               "worker")
        connection, pid = self._connection, self.process.pid
        if connection is None:
            return Outcome("cancelled")
        self.state = "running"
        try:
            with self._send_lock:
                try:
                    connection.send(("job", job.id, job.model.name, job.prompt, job.options, job.preview))
                except (TypeError, AttributeError, ValueError, pickle.PicklingError) as error:  # nothing was sent
                    return Outcome("failed", f"the job could not be sent to its worker: {error}", "internal")
            attempt.attach(_RemoteCancel(self, job.id))
            if attempt.cancel_requested:
                self.send(("cancel", job.id))
            while True:
                message = connection.recv()
                if message[0] == "event":
                    job.emit(message[1], message[2])
                elif message[0] == "loaded":
                    self._mark_loaded(message[1])
                elif message[0] == "finished":
                    return Outcome(**message[1])
        except (EOFError, OSError):
            if self._stopping:
                return Outcome("cancelled")
            self._reap()
            log.error("worker %d (pid %d) %s while running job %s", self.index, pid, self.last_exit, job.id)
            return Outcome("failed", f"the worker process running this job (worker {self.index}, pid {pid}) "
                                     f"{self.last_exit}; it is restarted, the job is lost", "worker")
        finally:
            attempt.attach(None)
            if self.state == "running":
                self.state = "ready"

    def _reap(self) -> None:
        """Record how the worker ended (it has, or its socket broke: then it is killed)."""
        process = self.process
        self._close_connection()
        self._mark_loaded([])
        self.state = "dead"
        if process is None:
            return
        try:
            code = process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
            code = process.wait()
        if code < 0:
            try:
                name = signal.Signals(-code).name
            except ValueError:
                name = str(-code)
            self.last_exit = f"was killed by {name}"
        else:
            self.last_exit = f"exited with status {code}"

    def _mark_loaded(self, names: List[str]) -> None:
        for model in self.models:
            (model.loaded_in.add if model.name in names else model.loaded_in.discard)(self.index)

    def info(self) -> Dict[str, Any]:
        process = self.process
        return {"index": self.index, "kind": self.kind, "state": self.state,
                "pid": process.pid if process is not None else None, "restarts": max(0, self.restarts),
                "environment": self.reported.get("environment", {}), "n_threads": self.reported.get("n_threads"),
                "error": self.reported.get("error") if self.state == "load failed" else None,
                "last_exit": self.last_exit}


def _worker_command(fd: int) -> List[str]:
    # Signals first, then the package: Ctrl-C and a service manager's SIGTERM reach the whole process group,
    # and the server stops its workers itself. -P (3.11+): the server's working folder is not on its path.
    bootstrap = ("import signal, sys; signal.signal(signal.SIGINT, signal.SIG_IGN); "
                 "signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                 "from sdcpp_py.server._process import main; sys.exit(main())")
    isolate = ["-P"] if sys.version_info >= (3, 11) else []
    return [sys.executable, *isolate, "-c", bootstrap, str(fd)]


def _worker_environment(devices: Dict[str, str]) -> Dict[str, str]:
    environment = dict(os.environ, **devices)
    # A source tree on the server's path (not where Python finds installed packages) is the worker's too.
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    installed = {os.path.abspath(path) for path in site.getsitepackages() + [site.getusersitepackages()]}
    if root not in installed:
        environment["PYTHONPATH"] = os.pathsep.join(filter(None, (root, os.environ.get("PYTHONPATH"))))
    return environment


# -- the worker's program ----------------------------------------------------------------------------------

def _loaded(models) -> List[str]:
    return [model.name for model in models if model.loaded]


def main(argv: Optional[List[str]] = None) -> int:
    """The worker: ``python -c BOOTSTRAP FD`` (``_worker_command``), FD its end of the socket pair."""
    argv = sys.argv[1:] if argv is None else argv
    connection = Connection(int(argv[0]))
    _, spec = connection.recv()
    from ._models import Model, Models

    models = Models([Model.from_options(name, options, default) for name, options, default in spec["models"]],
                    spec["max_loaded"])
    send_lock = threading.Lock()

    def send(message: tuple) -> None:
        with send_lock:
            connection.send(message)

    jobs: "queue.Queue[Optional[tuple]]" = queue.Queue()
    lock = threading.Lock()
    running: Dict[str, Any] = {"id": None, "attempt": None}
    cancelled = set()  # cancels that came before their job started

    def read() -> None:
        while True:
            try:
                message = connection.recv()
            except (EOFError, OSError):
                os._exit(0)  # the server is gone: so is its worker
            except BaseException:  # a message that cannot be read: the stream is lost
                os._exit(1)
            if message[0] == "job":
                jobs.put(message)
            elif message[0] == "cancel":
                with lock:
                    if running["id"] == message[1]:
                        running["attempt"].cancel()
                    else:
                        cancelled.add(message[1])
            elif message[0] == "stop":
                with lock:
                    if running["attempt"] is not None:
                        running["attempt"].cancel()
                jobs.put(None)
                return

    threading.Thread(target=read, name="sdcpp-worker-reader", daemon=True).start()
    error = None
    try:
        models.context(models.default)  # loaded before the first job, as a single server loads at startup
    except Exception as failure:
        error = f"model {models.default.name!r} could not be loaded: {str(failure).splitlines()[0]}"
    send(("ready", {"pid": os.getpid(), "loaded": _loaded(models), "error": error,
                    "environment": {name: os.environ[name] for name in DEVICE_VARIABLES if name in os.environ},
                    "n_threads": models.default.options.get("n_threads")}))
    while True:
        message = jobs.get()
        if message is None:
            break
        _, job_id, name, prompt, options, preview = message
        attempt = Attempt()
        with lock:
            running.update(id=job_id, attempt=attempt)
            if job_id in cancelled:
                attempt.cancel()
            cancelled.clear()
        model = models.find(name)
        if model is None:  # the server checked the name against the same list
            outcome = Outcome("failed", f"model {name!r} is not served by this worker", "internal")
        else:
            outcome = run_job(models, model, prompt, options, preview,
                              lambda event, data: send(("event", event, data)), attempt)
        with lock:
            running.update(id=None, attempt=None)
        send(("loaded", _loaded(models)))
        send(("finished", dataclasses.asdict(outcome)))
    models.close()
    return 0


