#!/usr/bin/env python3
"""Serving under load, side by side in one run, on the tiny synthetic Flux parts: a plain loop over
``Context.txt2img`` (no server), ``sdcpp serve`` (a thread; 1 and 2 worker processes) and Ray Serve (1 and 2
replicas), each fed the same requests (default 32, from 8 concurrent clients, 256x256, 4 steps) through
OpenAI's ``/v1/images/generations``. Reports throughput, p50/p95 latency, time per image against the plain loop
(the server's overhead where one worker runs), peak memory of the process tree and whether every image's pixels
equal the plain loop's. Not a test: nothing here asserts. No peer has an image server to compare with
(stable-diffusion-cpp-python and cyllama ship none; upstream's sd-server has one worker and no queue).

    python benchmarks/serve.py [--requests 32] [--clients 8] [--size 256] [--steps 4] [--no-ray] [--json out.json]

Ray's own servers listen on every interface (Ray 2.60): on a shared machine run it where only loopback exists,
``unshare --net sh -c 'ip link set lo up && exec python benchmarks/serve.py'`` (as root).
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import io
import itertools
import json
import math
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from harness import CACHE, runner, say, write_report

PROMPT = "a lighthouse at dusk"


def process_tree(root: int) -> list:
    """``root`` and its descendants, from /proc (Linux)."""
    children: dict = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as stat:
                    parent = int(stat.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(parent, []).append(int(entry))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, []))
    return tree


def rss_mib(pids) -> float:
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status") as status:
                total += next((int(line.split()[1]) for line in status if line.startswith("VmRSS:")), 0)
        except OSError:
            pass
    return total / 1024


class PeakMemory(threading.Thread):
    """Samples the summed RSS of the processes ``pids()`` names until stopped; ``peak`` in MiB."""

    def __init__(self, pids):
        super().__init__(daemon=True)
        self.pids, self.peak, self._done = pids, 0.0, threading.Event()

    def run(self):
        while not self._done.wait(0.1):
            self.peak = max(self.peak, rss_mib(self.pids()))

    def stop(self) -> float:
        self._done.set()
        self.join()
        return self.peak


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def pixels_sha(b64_png: str) -> str:
    import numpy as np
    from PIL import Image

    with Image.open(io.BytesIO(base64.b64decode(b64_png))) as picture:
        return hashlib.sha256(np.ascontiguousarray(np.asarray(picture.convert("RGB"))).tobytes()).hexdigest()


def percentile(values: list, fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(fraction * len(ordered)) - 1))]


def drive(base: str, seeds: list, clients: int, args) -> dict:
    """``clients`` threads send the requests (one per seed) as fast as answers come; latencies and hashes."""
    import httpx

    todo = iter(seeds)
    lock = threading.Lock()
    latencies, images, failures = [], {}, []

    def client():
        with httpx.Client(base_url=base, timeout=600) as http:
            while True:
                with lock:
                    seed = next(todo, None)
                if seed is None:
                    return
                body = {"prompt": PROMPT, "size": f"{args.size}x{args.size}", "response_format": "b64_json",
                        "steps": args.steps, "cfg_scale": 1.0, "seed": seed}
                began = time.perf_counter()
                response = http.post("/v1/images/generations", json=body)
                elapsed = time.perf_counter() - began
                with lock:
                    if response.status_code != 200:
                        failures.append(f"{response.status_code} {response.text[:200]}")
                        continue
                    latencies.append(elapsed)
                    images[seed] = response.json()["data"][0]["b64_json"]

    started = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    # Decoded after the clock stops: the clients share the CPUs with the server.
    hashes = {seed: pixels_sha(image) for seed, image in images.items()}
    return {"wall_s": wall, "latencies": latencies, "sha256": hashes, "failures": failures}


def wait_ready(base: str, process, seconds: float = 300) -> None:
    import httpx

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"the server ended with status {process.returncode}")
        try:
            health = httpx.get(base + "/health", timeout=2).json()
            if all(worker.get("state", "ready") == "ready" for worker in health.get("workers", [])):
                return
        except (OSError, ValueError, Exception):  # not listening yet
            pass
        time.sleep(0.2)
    raise RuntimeError("the server did not become ready")


def warm_up(base: str, args, count: int) -> None:
    """One request per worker first, as the plain loop's first call is left out: first-call costs (graph
    allocation, page faults) are not what a long-running server pays per request."""
    drive(base, [10_000 + index for index in range(count)], count, args)


def measure_sdcpp_serve(label: str, flags: list, parts: dict, seeds: list, args, workers: int) -> dict:
    port = free_port()
    components = [item for name, path in parts.items() for item in (f"--{name.replace('_model', '-model')}", path)]
    command = [sys.executable, "-m", "sdcpp_py.cli", "serve", *components, *flags, "--port", str(port),
               "--queue-size", str(len(seeds)), "--max-pixels", str(args.size * args.size)]
    say(f"{label}: {' '.join(flags)}")
    process = subprocess.Popen(command, stdin=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(base, process)
        warm_up(base, args, workers)
        memory = PeakMemory(lambda: process_tree(process.pid))
        memory.start()
        result = drive(base, seeds, args.clients, args)
        result["peak_mib"] = memory.stop()
    finally:
        process.terminate()
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()
    return result


def measure_ray(label: str, replicas: int, parts: dict, seeds: list, args) -> dict:
    import ray
    from ray import serve

    from sdcpp_py import serve_ray

    say(f"{label}: {replicas} replica(s), n_threads {max(1, 2 // replicas)} each")
    port = free_port()
    ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False,
             object_store_memory=200 * 2**20, _node_ip_address="127.0.0.1")
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        options = {**{name: str(path) for name, path in parts.items()}, "num_replicas": str(replicas),
                   "n_threads": str(max(1, 2 // replicas)), "queue_size": str(len(seeds)),
                   "max_pixels": str(args.size * args.size)}
        serve.run(serve_ray.app(options), name="sdcpp", route_prefix="/", blocking=False)
        base = f"http://127.0.0.1:{port}"
        wait_ready(base, None)
        warm_up(base, args, replicas * 2)
        raylet = ray._private.worker._global_node.all_processes  # the node's own processes, for the tree
        roots = [info.process.pid for infos in raylet.values() for info in infos if info.process is not None]
        memory = PeakMemory(lambda: [pid for root in roots for pid in process_tree(root)] + [os.getpid()])
        memory.start()
        result = drive(base, seeds, args.clients, args)
        result["peak_mib"] = memory.stop()
        serve.shutdown()
    finally:
        ray.shutdown()
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=32)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--no-ray", action="store_true", help="leave out Ray Serve")
    parser.add_argument("--markdown", type=Path)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    from sdcpp_py.testing import flux1

    parts = {name: str(path) for name, path in flux1.flux_components(CACHE / "synthetic" / "flux").items()}
    seeds = list(range(1, args.requests + 1))
    results = {}

    say("plain loop over Context.txt2img (n_threads 2)")
    plain_job = {"components": parts, "n_threads": 2, "prompt": PROMPT, "size": args.size, "steps": args.steps,
                 "cfg": 1.0, "seeds": [10_000] + seeds}  # the first call is left out, as a server warms up
    output = subprocess.run([sys.executable, runner("plain_loop"), json.dumps(plain_job)], check=True,
                            capture_output=True, text=True).stdout
    plain = json.loads(output.strip().splitlines()[-1])
    plain_seconds = plain["seconds"][1:]
    results["plain loop"] = {"wall_s": sum(plain_seconds), "latencies": plain_seconds, "workers": 1,
                             "sha256": dict(zip(seeds, plain["sha256"][1:])), "failures": [],
                             "peak_mib": plain["rss_mib"]}

    configurations = [("sdcpp serve, thread", ["-t", "2"], 1),
                      ("sdcpp serve --workers 1", ["-t", "2", "--workers", "1"], 1),
                      ("sdcpp serve --workers 2", ["-t", "1", "--workers", "2"], 2)]
    for label, flags, workers in configurations:
        results[label] = dict(measure_sdcpp_serve(label, flags, parts, seeds, args, workers), workers=workers)
    if not args.no_ray:
        try:
            import ray  # noqa: F401
        except ImportError:
            say("Ray is not installed (pip install 'sdcpp-py[ray]'): left out")
        else:
            for replicas in (1, 2):
                label = f"Ray Serve, {replicas} replica{'s' if replicas > 1 else ''}"
                results[label] = dict(measure_ray(label, replicas, parts, seeds, args), workers=replicas)

    reference = results["plain loop"]
    per_image = reference["wall_s"] / len(seeds)
    lines = [f"{args.requests} requests from {args.clients} clients, {args.size}x{args.size}, {args.steps} steps, "
             f"tiny synthetic Flux parts, {os.cpu_count()} CPUs; time per image against the plain loop "
             f"({per_image:.3f} s)", "",
             "| configuration | workers | images/s | p50 s | p95 s | time per image vs plain loop | peak RSS MiB "
             "| answered | pixels equal |", "|---|---|---|---|---|---|---|---|---|"]
    for label, result in results.items():
        answered = len(result["latencies"])
        equal = all(result["sha256"].get(seed) == reference["sha256"][seed] for seed in seeds)
        ratio = (result["wall_s"] / max(1, answered)) / per_image
        lines.append(f"| {label} | {result['workers']} | {answered / result['wall_s']:.2f} | "
                     f"{percentile(result['latencies'], 0.5):.3f} | {percentile(result['latencies'], 0.95):.3f} | "
                     f"{ratio:.3f} | {result['peak_mib']:.0f} | {answered}/{len(seeds)} | {'yes' if equal else 'NO'} |")
        for failure in itertools.islice(result["failures"], 3):
            lines.append(f"<!-- {label}: {failure} -->")
    lines += ["", "The plain loop's p50/p95 are single calls with no queue; the servers' are what a client waits, "
                  "queue included."]
    write_report(lines, results, args.markdown, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
