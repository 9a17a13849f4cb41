"""sdcpp_py.serve_ray: the server's app on Ray Serve, over the tiny synthetic Flux parts (64x64, 4 steps). One
local Ray cluster for the module (no dashboard, no usage stats, a small object store), with Serve's HTTP proxy
on a free port of 127.0.0.1 and two replicas of one thread each. A watchdog ends a hung Ray.

Ray 2.60's own servers (GCS, raylet, workers, agents) listen on every interface whatever node address it is
given, so the cluster tests run in a network namespace whose only interface is loopback:
``test_the_cluster_tests_run_where_only_loopback_exists`` starts them there (``unshare --net``)."""

from __future__ import annotations

import _thread
import concurrent.futures
import faulthandler
import http.client
import json
import os
import shutil
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

import sdcpp_py

ray = pytest.importorskip("ray")
serve = pytest.importorskip("ray.serve")
pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")
pytest.importorskip("uvicorn")
pytest.importorskip("multipart")
Image = pytest.importorskip("PIL.Image")

from servers import b64_pixels, free_port, wait_for  # noqa: E402

from sdcpp_py import serve_ray  # noqa: E402

SIZE = 64
STEPS = 4
QUEUE = 6  # per replica: 7 generations at a time (then 429), so the 7 requests never meet a 429 however Ray routes them
LIMIT = 240  # seconds for the module before the watchdog interrupts it (it ends the process 30 s later)
LOOPBACK_ONLY = os.environ.get("SDCPP_PY_LOOPBACK_ONLY") == "1"  # set inside the namespace
in_loopback_namespace = pytest.mark.skipif(
    not LOOPBACK_ONLY, reason="a Ray cluster runs only where loopback is the only interface: "
                              "test_the_cluster_tests_run_where_only_loopback_exists runs this test there")


@pytest.fixture(scope="module")
def parts(flux_parts_with_encoder):
    return flux_parts_with_encoder


@pytest.fixture(scope="module")
def local(parts):
    """What the replicas should make: a Context of this process with the replicas' options."""
    with sdcpp_py.Context(**parts, n_threads=1) as context:
        yield context


class Watchdog:
    """Interrupts the main thread after ``seconds``; if that does not end the run, dumps every thread's
    stack and ends the process (Ray's local processes share its fate)."""

    def __init__(self, seconds: float):
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._watch, args=(seconds,), daemon=True)
        self.thread.start()

    def _watch(self, seconds: float) -> None:
        if self.done.wait(seconds):
            return
        print(f"\ntest_serve_ray: over {seconds} s, interrupting", file=sys.stderr, flush=True)
        _thread.interrupt_main()
        if not self.done.wait(30):
            faulthandler.dump_traceback(file=sys.stderr)
            os._exit(3)

    def cancel(self) -> None:
        self.done.set()


@pytest.fixture(scope="module")
def base(parts):
    """Serve's proxy address, with the app running as two replicas."""
    watchdog = Watchdog(LIMIT)
    saved = {name: os.environ.get(name) for name in ("RAY_USAGE_STATS_ENABLED",)}
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    started = time.monotonic()
    try:
        ray.init(address="local", num_cpus=2, num_gpus=0, include_dashboard=False, _node_ip_address="127.0.0.1",
                 object_store_memory=100 * 2**20, log_to_driver=False)
        port = free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        args = {name: str(path) for name, path in parts.items()}
        args.update(n_threads="1", num_replicas="2", queue_size=str(QUEUE))
        serve.run(serve_ray.app(args), name="sdcpp", route_prefix="/")
        print(f"\nRay and two replicas up in {time.monotonic() - started:.1f} s", file=sys.stderr)
        yield f"http://127.0.0.1:{port}"
    finally:
        try:
            serve.shutdown()
        finally:
            ray.shutdown()
            watchdog.cancel()
            for name, value in saved.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value


@pytest.mark.skipif(LOOPBACK_ONLY, reason="this is the namespace's run")
def test_the_cluster_tests_run_where_only_loopback_exists():
    for tool in ("unshare", "ip"):
        if shutil.which(tool) is None:
            pytest.skip(f"no {tool} (util-linux, iproute2): the Ray cluster tests need a loopback-only namespace")
    if subprocess.run(["unshare", "--net", "true"], capture_output=True).returncode != 0:
        pytest.skip("no network namespaces here (unshare --net needs root or user namespaces)")
    command = ["unshare", "--net", "sh", "-c", 'ip link set lo up && exec "$@"', "sh", sys.executable, "-m",
               "pytest", os.path.abspath(__file__), "-q", "-p", "no:cacheprovider", "-k", "cluster"]
    result = subprocess.run(command, env=dict(os.environ, SDCPP_PY_LOOPBACK_ONLY="1"), capture_output=True,
                            text=True, timeout=LIMIT + 60)
    report = result.stdout[-6000:] + result.stderr[-3000:]
    assert result.returncode == 0, report
    assert "2 passed" in result.stdout, report
    print(result.stdout[-1500:])


def test_importing_sdcpp_py_does_not_import_ray():
    code = "import sys, sdcpp_py; print('ray' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_arguments_are_converted_and_checked(parts, tmp_path):
    args = {name: str(path) for name, path in parts.items()}
    replica, options = serve_ray.parse_args(dict(args, n_threads="1", num_replicas="3", queue_size="5",
                                                 flash_attn="true", max_vram="1.5", api_key="k"))
    (name, context, default), = replica["models"]
    assert (name, default) == ("sdcpp", True)
    assert context["n_threads"] == 1 and context["flash_attn"] is True and context["max_vram"] == 1.5
    assert replica["settings"] == {"queue_size": 5, "api_key": "k"}
    assert options["num_replicas"] == 3 and options["max_ongoing_requests"] == 6 + serve_ray.LIGHT_REQUESTS
    assert options.get("ray_actor_options") == ({"num_gpus": 1} if sdcpp_py.BACKEND in ("cuda", "vulkan")
                                                else {"num_cpus": 1} if sdcpp_py.BACKEND == "cpu" else None)
    with pytest.raises(ValueError, match=r"unknown argument 'diffusion_modle'; did you mean diffusion_model"):
        serve_ray.parse_args(dict(args, diffusion_modle="x"))
    with pytest.raises(ValueError, match=r"n_threads='two' is not an int"):
        serve_ray.parse_args(dict(args, n_threads="two"))
    with pytest.raises(ValueError, match=r"queue_size must be an int of at least 0"):
        serve_ray.parse_args(dict(args, queue_size="-1"))
    assert serve_ray.parse_args(dict(args, max_ref_images="2"))[0]["settings"] == {"max_ref_images": 2}
    with pytest.raises(ValueError, match=r"the API key must be printable ASCII"):
        serve_ray.parse_args(dict(args, api_key=" k"))
    with pytest.raises(ValueError, match=r"use num_replicas"):
        serve_ray.parse_args(dict(args, workers="2"))
    with pytest.raises(ValueError, match=r"no model"):
        serve_ray.parse_args({"num_replicas": "2"})
    config = tmp_path / "models.toml"
    config.write_text("[models.tiny]\n" + "".join(f'{name} = "{path}"\n' for name, path in parts.items()))
    replica, options = serve_ray.parse_args({"config": str(config), "n_threads": "1", "max_loaded": "1"})
    assert [(name, context["n_threads"]) for name, context, _ in replica["models"]] == [("tiny", 1)]
    with pytest.raises(ValueError, match=r"drop vae"):
        serve_ray.parse_args({"config": str(config), "vae": str(parts["vae"])})


def test_resources_model_name_and_config_are_checked_naming_the_argument(parts, tmp_path):
    args = {name: str(path) for name, path in parts.items()}
    for key in ("num_cpus", "num_gpus"):
        for value in ("inf", "nan", "-1", "1e30"):
            with pytest.raises(ValueError, match=rf"{key} must be a number from 0 to \d+, not '{value}'"):
                serve_ray.parse_args(dict(args, **{key: value}))
    assert serve_ray.parse_args(dict(args, num_cpus="0.5"))[1]["ray_actor_options"]["num_cpus"] == 0.5
    for name in ("", "  ", "a\nb", "tab\there", "bell\x07"):
        with pytest.raises(ValueError, match=r"model_name must be non-empty printable text"):
            serve_ray.parse_args(dict(args, model_name=name))
    assert serve_ray.parse_args(dict(args, model_name="flux schnell"))[0]["models"][0][0] == "flux schnell"
    binary = tmp_path / "models.toml"
    binary.write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe")
    with pytest.raises(ValueError, match=r"^config: .*models.toml: not valid TOML: not UTF-8 text"):
        serve_ray.parse_args({"config": str(binary)})
    with pytest.raises(ValueError, match=r"^config must be the path of a TOML file, not ''"):
        serve_ray.parse_args({"config": ""})
    with pytest.raises(ValueError, match=r"^config: .*missing.toml: No such file"):
        serve_ray.parse_args({"config": str(tmp_path / "missing.toml")})


def openai_body(seed: int) -> dict:
    return {"prompt": f"a lighthouse {seed}", "size": f"{SIZE}x{SIZE}", "response_format": "b64_json",
            "steps": STEPS, "seed": seed, "cfg_scale": 1.0}


@in_loopback_namespace
def test_cluster_concurrent_requests_reach_both_replicas_with_the_pixels_of_a_context(base, local):
    def openai(seed: int):
        with httpx.Client(base_url=base, timeout=120) as client:
            return client.post("/v1/images/generations", json=openai_body(seed))

    def a1111():
        body = {"prompt": "a house", "negative_prompt": "fog", "steps": STEPS, "cfg_scale": 2.0, "width": SIZE,
                "height": SIZE, "seed": 3, "sampler_name": "Euler a"}
        with httpx.Client(base_url=base, timeout=120) as client:
            return client.post("/sdapi/v1/txt2img", json=body)

    started = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(7) as pool:
        openai_answers = list(pool.map(openai, range(1, 7)))
        a1111_answer = pool.submit(a1111).result()
    print(f"\n7 requests answered in {time.monotonic() - started:.1f} s", file=sys.stderr)
    for seed, response in zip(range(1, 7), openai_answers):
        assert response.status_code == 200, response.text
        expected = local.txt2img(f"a lighthouse {seed}", width=SIZE, height=SIZE, steps=STEPS, seed=seed,
                                 cfg_scale=1.0)[0]
        np.testing.assert_array_equal(b64_pixels(response.json()["data"][0]["b64_json"]), expected)
    assert a1111_answer.status_code == 200, a1111_answer.text
    expected = local.txt2img("a house", negative_prompt="fog", width=SIZE, height=SIZE, steps=STEPS, cfg_scale=2.0,
                             seed=3, sampler="euler_a")[0]
    np.testing.assert_array_equal(b64_pixels(a1111_answer.json()["images"][0]), expected)
    assert json.loads(a1111_answer.json()["info"])["all_seeds"] == [3]
    replicas = {response.headers["x-sdcpp-replica"] for response in openai_answers + [a1111_answer]}
    assert len(replicas) == 2, replicas


@in_loopback_namespace
def test_cluster_a_client_that_leaves_cancels_its_job(base):
    def health_of_all(client: httpx.Client) -> dict:
        """Each replica's /health, by replica (the proxy picks one per request: ask until both answered)."""
        seen: dict = {}
        deadline = time.monotonic() + 20
        while len(seen) < 2:
            assert time.monotonic() < deadline, seen
            response = client.get("/health")
            seen[response.headers["x-sdcpp-replica"]] = response.json()
        return seen

    with httpx.Client(base_url=base, timeout=30) as client:
        host, port = base.removeprefix("http://").split(":")
        leaving = http.client.HTTPConnection(host, int(port), timeout=30)
        leaving.request("POST", "/v1/images/generations", json.dumps(dict(openai_body(1), steps=5000)),
                        {"Content-Type": "application/json"})
        wait_for(lambda: any(health["running"] for health in health_of_all(client).values()), 30)
        leaving.close()  # 5000 steps take minutes: only a cancel ends the job soon
        started = time.monotonic()
        wait_for(lambda: not any(health["running"] or health["queued"]
                                 for health in health_of_all(client).values()), 30)
        print(f"\njob cancelled {time.monotonic() - started:.1f} s after its client left", file=sys.stderr)
        # The replica that ran it still answers.
        response = client.post("/v1/images/generations", json=openai_body(2))
        assert response.status_code == 200, response.text
