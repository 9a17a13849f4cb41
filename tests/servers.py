"""What the server tests share: a uvicorn server over a Context started on a free port of 127.0.0.1 in a
thread, `sdcpp serve` in a subprocess, and polling with a deadline. A helper module, not a test; its
importers skip without the server extra first."""

import base64
import contextlib
import io
import os
import socket
import subprocess
import sys
import threading
import time

import httpx
import numpy as np

import uvicorn  # the test modules importorskip it before importing this one

from sdcpp_py.server import Settings, create_app


@contextlib.contextmanager
def serving(context, **settings):
    """A uvicorn server over ``context`` on a free port of 127.0.0.1; its base address."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(create_app(context, Settings(**settings)), log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()
        assert not thread.is_alive()


def wait_for(predicate, seconds: float = 20.0):
    deadline = time.monotonic() + seconds
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def png_pixels(data: bytes) -> np.ndarray:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as picture:
        return np.asarray(picture.convert("RGB"))


def b64_pixels(text: str) -> np.ndarray:
    return png_pixels(base64.b64decode(text))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def component_flags(parts: dict) -> list:
    """``sdcpp serve``'s flags for Context keywords of component files."""
    return [item for name, path in parts.items() for item in (f"--{name.replace('_model', '-model')}", str(path))]


@contextlib.contextmanager
def sdcpp_serve(*flags, seconds: float = 90):
    """``sdcpp serve FLAGS`` on a free port of 127.0.0.1, once /health answers: (base address, process).
    Stopped with SIGTERM (killed if it does not end) on the way out."""
    port = free_port()
    command = [sys.executable, "-m", "sdcpp_py.cli", "serve", *flags, "--port", str(port)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=dict(os.environ))
    base = f"http://127.0.0.1:{port}"

    def health():
        try:
            with httpx.Client(timeout=1) as http:
                return http.get(base + "/health").json()
        except httpx.TransportError:
            assert process.poll() is None, process.stdout.read().decode()
            return None

    try:
        wait_for(health, seconds)
        yield base, process
    finally:
        if process.poll() is None:
            process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        process.stdout.close()
