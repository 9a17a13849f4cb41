"""`sdcpp serve`: the OpenAI, AUTOMATIC1111 and job APIs over the tiny synthetic Flux parts (64x64, few steps),
with servers started here on 127.0.0.1 (uvicorn in a thread; `sdcpp serve` in a subprocess)."""

from __future__ import annotations

import base64
import http.client
import io
import json
import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

import sdcpp_py

pytest.importorskip("fastapi")
uvicorn = pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")
pytest.importorskip("multipart")
Image = pytest.importorskip("PIL.Image")

from servers import b64_pixels, component_flags, sdcpp_serve, serving, wait_for  # noqa: E402

from sdcpp_py.server._models import Model  # noqa: E402

SIZE = 64
LONG = 5000  # steps of a job that runs until it is cancelled (about 0.05 s each)


@pytest.fixture(scope="module")
def parts(flux_parts_with_encoder):
    """The tiny Flux parts with a VAE encoder (img2img and edits); conftest's ``ctx`` is a Context over them."""
    return flux_parts_with_encoder


@pytest.fixture(scope="module")
def served(parts):
    with sdcpp_py.Context(**parts, n_threads=2) as context:
        yield context


@pytest.fixture(scope="module")
def base(served):
    with serving(served, queue_size=1, max_pixels=128 * 128, max_n=2) as url:
        yield url


@pytest.fixture()
def client(base):
    with httpx.Client(base_url=base, timeout=60) as http:
        yield http
        # Each test leaves the server idle.
        deadline = time.monotonic() + 20
        while http.get("/health").json()["running"] or http.get("/health").json()["queued"]:
            assert time.monotonic() < deadline
            time.sleep(0.05)


def b64_png(array: np.ndarray) -> str:
    out = io.BytesIO()
    Image.fromarray(array).save(out, "PNG")
    return base64.b64encode(out.getvalue()).decode("ascii")


def test_import_sdcpp_py_does_not_import_the_server_libraries():
    code = "import sys, sdcpp_py; print(sorted({'fastapi', 'uvicorn', 'starlette'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_the_openai_client_gets_the_pixels_of_txt2img(base, client, ctx):
    openai = pytest.importorskip("openai")
    api = openai.OpenAI(base_url=base + "/v1", api_key="unused", max_retries=0)
    assert [model.id for model in api.models.list()] == ["sdcpp"]
    response = api.images.generate(model="sdcpp", prompt="a lighthouse", size=f"{SIZE}x{SIZE}", n=2,
                                   response_format="b64_json",
                                   extra_body={"steps": 2, "cfg_scale": 1.0, "seed": 7, "sampler": "Euler a"})
    expected = ctx.txt2img("a lighthouse", width=SIZE, height=SIZE, steps=2, cfg_scale=1.0, seed=7,
                            sampler="euler_a", batch_count=2)
    assert len(response.data) == 2
    for item, image in zip(response.data, expected):
        np.testing.assert_array_equal(b64_pixels(item.b64_json), image)
    with Image.open(io.BytesIO(base64.b64decode(response.data[1].b64_json))) as picture:
        parameters = picture.info["parameters"]
    assert parameters.startswith("a lighthouse\nSteps: 2, CFG scale: 1.0, Seed: 8, Size: 64x64, Sampler: euler_a")
    # Fields left out take Context.txt2img's defaults (cfg 7.0, the model's sampler, seed 42).
    response = api.images.generate(prompt="a lighthouse", size=f"{SIZE}x{SIZE}", extra_body={"steps": 1})
    expected = ctx.txt2img("a lighthouse", width=SIZE, height=SIZE, steps=1)
    np.testing.assert_array_equal(b64_pixels(response.data[0].b64_json), expected[0])


def test_openai_edits_takes_a_multipart_image_and_mask(client, ctx):
    start = ctx.txt2img("a cat", width=SIZE, height=SIZE, steps=1, seed=1)[0]
    mask = np.zeros((SIZE, SIZE, 4), np.uint8)
    mask[:, :, 3] = 255
    mask[:32, :, 3] = 0  # OpenAI: the transparent part is edited
    files = {"image": ("in.png", base64.b64decode(b64_png(start)), "image/png"),
             "mask": ("mask.png", base64.b64decode(b64_png(mask)), "image/png")}
    data = {"prompt": "a dog", "steps": "2", "seed": "4", "strength": "0.6"}
    response = client.post("/v1/images/edits", files=files, data=data)
    assert response.status_code == 200, response.text
    grey = np.where(mask[:, :, 3] == 0, 255, 0).astype(np.uint8)
    expected = ctx.inpaint("a dog", start, grey, strength=0.6, steps=2, seed=4)[0]
    np.testing.assert_array_equal(b64_pixels(response.json()["data"][0]["b64_json"]), expected)


def test_a1111_txt2img_and_img2img(client, ctx):
    body = {"prompt": "a house", "negative_prompt": "fog", "steps": 2, "cfg_scale": 2.0, "width": SIZE,
            "height": SIZE, "seed": 3, "sampler_name": "Euler a", "scheduler": "Karras", "batch_size": 1,
            "restore_faces": False}  # a field A1111 has and the core does not is ignored, as A1111 ignores
    response = client.post("/sdapi/v1/txt2img", json=body)
    assert response.status_code == 200, response.text
    result = response.json()
    expected = ctx.txt2img("a house", negative_prompt="fog", width=SIZE, height=SIZE, steps=2, cfg_scale=2.0,
                            seed=3, sampler="euler_a", scheduler="karras")[0]
    np.testing.assert_array_equal(b64_pixels(result["images"][0]), expected)
    assert json.loads(result["info"])["all_seeds"] == [3]
    # The sampler name with the schedule in it, as A1111 before 1.9 wrote it.
    old = dict(body, sampler_name="Euler a Karras", scheduler=None)
    np.testing.assert_array_equal(b64_pixels(client.post("/sdapi/v1/txt2img", json=old).json()["images"][0]),
                                  expected)

    body = {"prompt": "a boat", "init_images": [result["images"][0]], "denoising_strength": 0.5, "steps": 2,
            "seed": 9}
    response = client.post("/sdapi/v1/img2img", json=body)
    assert response.status_code == 200, response.text
    expected = ctx.img2img("a boat", expected, strength=0.5, steps=2, seed=9)[0]
    np.testing.assert_array_equal(b64_pixels(response.json()["images"][0]), expected)

    names = [item["name"] for item in client.get("/sdapi/v1/samplers").json()]
    assert "Euler a" in names and "DPM++ 2M" in names
    assert {"name": "karras", "label": "Karras"}.items() <= client.get("/sdapi/v1/schedulers").json()[1].items()
    assert client.get("/sdapi/v1/sd-models").json()[0]["model_name"] == "sdcpp"
    assert client.get("/sdapi/v1/loras").json() == []


def test_a1111_progress_and_interrupt(base, client):
    idle = client.get("/sdapi/v1/progress").json()
    assert idle["progress"] == 0 and idle["state"]["job_count"] == 0
    answer = {}

    def generate():
        with httpx.Client(base_url=base, timeout=60) as other:
            answer["response"] = other.post("/sdapi/v1/txt2img", json={"prompt": "x", "width": SIZE, "height": SIZE,
                                                                      "steps": LONG})

    thread = threading.Thread(target=generate)
    thread.start()
    busy = wait_for(lambda: (lambda p: p if p["state"]["sampling_step"] >= 2 else None)(
        client.get("/sdapi/v1/progress").json()))
    assert busy["state"]["sampling_steps"] == LONG and 0 < busy["progress"] < 1 and busy["state"]["job_count"] == 1
    assert b64_pixels(busy["current_image"]).shape[2] == 3  # the live preview, as A1111 shows it
    assert client.get("/sdapi/v1/progress", params={"skip_current_image": "true"}).json()["current_image"] is None
    started = time.monotonic()
    assert client.post("/sdapi/v1/interrupt").status_code == 200
    thread.join(30)
    assert time.monotonic() - started < 5
    assert answer["response"].status_code == 409
    assert answer["response"].json()["error"]["type"] == "cancelled"


def _events(response):
    events, name = [], None
    for line in response.iter_lines():
        if line.startswith("event: "):
            name = line[7:]
        elif line.startswith("data: "):
            events.append((name, json.loads(line[6:])))
    return events


def test_job_api_with_progress_events_in_order(client, ctx):
    response = client.post("/v1/jobs", json={"prompt": "a tree", "width": SIZE, "height": SIZE, "steps": 3,
                                             "seed": 5, "preview": True})
    assert response.status_code == 202, response.text
    job = response.json()["id"]
    with client.stream("GET", f"/v1/jobs/{job}/events") as stream:
        assert stream.headers["content-type"].startswith("text/event-stream")
        events = _events(stream)
    names = [name for name, _ in events]
    assert names[0] == "queued" and names[1] == "running" and names[-1] == "done", names
    steps = [data["step"] for name, data in events if name == "progress"]
    assert steps == sorted(steps) and steps[-1] == 3 and all(d["steps"] == 3 for n, d in events if n == "progress")
    previews = [data for name, data in events if name == "preview"]
    assert previews and b64_pixels(previews[0]["image"]).ndim == 3
    expected = ctx.txt2img("a tree", width=SIZE, height=SIZE, steps=3, seed=5)[0]
    np.testing.assert_array_equal(b64_pixels(events[-1][1]["images"][0]), expected)
    status = client.get(f"/v1/jobs/{job}").json()
    assert status["state"] == "done" and status["seed"] == 5
    np.testing.assert_array_equal(b64_pixels(status["images"][0]), expected)
    assert client.delete(f"/v1/jobs/{job}").json()["state"] == "done"  # too late to cancel: left as it is
    missing = client.get("/v1/jobs/nope")
    assert missing.status_code == 404 and missing.json()["error"]["param"] == "id"


def test_a_full_queue_answers_429_and_jobs_cancel(client):
    long = {"prompt": "x", "width": SIZE, "height": SIZE, "steps": LONG}
    running = client.post("/v1/jobs", json=long).json()["id"]
    wait_for(lambda: client.get(f"/v1/jobs/{running}").json()["state"] == "running")
    queued = client.post("/v1/jobs", json=long).json()
    assert queued["state"] == "queued" and queued["position"] == 0
    full = client.post("/v1/jobs", json=long)
    assert full.status_code == 429 and int(full.headers["Retry-After"]) >= 1
    full = client.post("/v1/images/generations", json={"prompt": "x", "size": "64x64"})
    assert full.status_code == 429 and "Retry-After" in full.headers
    assert client.delete(f"/v1/jobs/{queued['id']}").json()["state"] == "cancelled"
    started = time.monotonic()
    client.delete(f"/v1/jobs/{running}")
    wait_for(lambda: client.get(f"/v1/jobs/{running}").json()["state"] == "cancelled")
    assert time.monotonic() - started < 5


def test_a_client_that_disconnects_cancels_its_job(base, client):
    body = {"prompt": "a bridge", "size": "64x64", "steps": 2, "seed": 11}
    fresh = client.post("/v1/images/generations", json=body).json()["data"][0]["b64_json"]
    connection = http.client.HTTPConnection("127.0.0.1", int(base.rsplit(":", 1)[1]), timeout=10)
    connection.request("POST", "/v1/images/generations", json.dumps(dict(body, steps=LONG)),
                       {"Content-Type": "application/json"})
    wait_for(lambda: client.get("/sdapi/v1/progress").json()["state"]["sampling_step"] >= 2)
    connection.close()
    started = time.monotonic()
    wait_for(lambda: not client.get("/health").json()["running"], 10)
    assert time.monotonic() - started < 5
    after = client.post("/v1/images/generations", json=body).json()["data"][0]["b64_json"]
    np.testing.assert_array_equal(b64_pixels(after), b64_pixels(fresh))


NOT_AN_IMAGE = base64.b64encode(b"hello, not a picture").decode()
TINY_PNG = b64_png(np.zeros((8, 8, 3), np.uint8))
# A 128x128 PNG (max_pixels of the tests' server) cut short: its header says its size, its pixels fail to decode.
CUT_PNG = base64.b64encode(base64.b64decode(b64_png(np.zeros((128, 128, 3), np.uint8)))[:-20]).decode()
BAD_REQUESTS = [
    ("/v1/images/generations", {"prompt": "x", "sampler": "nope"}, "sampler"),
    ("/sdapi/v1/txt2img", {"prompt": "x", "sampler_name": "nope"}, "sampler_name"),
    ("/sdapi/v1/txt2img", {"prompt": "x", "scheduler": "nope"}, "scheduler"),
    ("/v1/images/generations", {"prompt": "x", "size": "64"}, "size"),
    ("/v1/images/generations", {"prompt": "x", "size": "60x64"}, "size"),  # not a multiple of Flux's 8
    ("/v1/images/generations", {"prompt": "x", "size": "256x256"}, "size"),  # over max_pixels
    ("/sdapi/v1/txt2img", {"prompt": "x", "width": 256, "height": 256}, "width"),
    ("/v1/images/generations", {"prompt": "x", "size": "64x64", "n": 3}, "n"),  # over max_n
    ("/sdapi/v1/txt2img", {"prompt": "x", "width": 64, "height": 64, "batch_size": 3}, "batch_size"),
    ("/sdapi/v1/img2img", {"prompt": "x", "init_images": ["!!not base64!!"]}, "init_images[0]"),
    ("/sdapi/v1/img2img", {"prompt": "x", "init_images": [NOT_AN_IMAGE]}, "init_images[0]"),
    ("/sdapi/v1/img2img", {"prompt": "x", "init_images": [NOT_AN_IMAGE, NOT_AN_IMAGE]}, "init_images"),
    ("/v1/jobs", {"prompt": "x", "init_image": NOT_AN_IMAGE}, "init_image"),
    ("/v1/images/generations", {"prompt": "x", "response_format": "url"}, "response_format"),
    ("/v1/images/generations", {"prompt": "x", "size": "64x64", "steps": "two"}, "steps"),
    ("/sdapi/v1/txt2img", {"prompt": "x", "width": 64, "height": 64, "cfg_scale": float("inf")}, "cfg_scale"),
    ("/v1/jobs", {"prompt": "x", "stepz": 2}, "stepz"),
    ("/v1/jobs", {"prompt": "x", "width": 64, "height": 64, "seed": -5}, "seed"),
    ("/v1/jobs", {"prompt": "x", "loras": [{"name": "../../etc/passwd"}]}, "loras"),
    ("/v1/images/generations", {"size": "64x64"}, "prompt"),
    ("/v1/images/generations", {"prompt": "x", "model": "other"}, "model"),
    # What the answer could not hold again: NaN (A1111 echoes the body), lone surrogates, in values and names.
    ("/sdapi/v1/txt2img", {"prompt": "x", "width": 64, "height": 64, "steps": 1, "styles": float("nan")}, "styles"),
    ("/sdapi/v1/txt2img", {"prompt": "x", "width": 64, "height": 64, "steps": 1, "styles": ["\ud800"]}, "styles[0]"),
    ("/v1/jobs", {"prompt": "x", "\ud800": 1}, "\\ud800"),
    ("/sdapi/v1/txt2img", {"prompt": "x", "width": 64, "height": 64, "steps": 1, "override_settings": "junk"},
     "override_settings"),
    # A job with previews is checked with a preview callable, as it runs.
    ("/v1/jobs", {"prompt": "x", "width": 64, "height": 64, "steps": 1, "preview": True, "preview_mode": "none"},
     "preview_mode"),
    # Reference images: at most 10, and 4 * max_pixels together, known from the headers before any is decoded.
    ("/v1/jobs", {"prompt": "x", "width": 64, "height": 64, "steps": 1, "ref_images": [TINY_PNG] * 11}, "ref_images"),
    ("/v1/jobs", {"prompt": "x", "width": 64, "height": 64, "steps": 1, "ref_images": [CUT_PNG] * 5}, "ref_images"),
    ("/v1/jobs", {"prompt": "x", "width": 64, "height": 64, "steps": 1, "ref_images": [CUT_PNG]}, "ref_images[0]"),
]


@pytest.mark.parametrize("path,body,field", BAD_REQUESTS, ids=[f"{p}:{f}" for p, _, f in BAD_REQUESTS])
def test_a_bad_request_is_a_4xx_naming_the_field(client, path, body, field):
    response = client.post(path, content=json.dumps(body, allow_nan=True), headers={"Content-Type": "application/json"})
    assert 400 <= response.status_code < 500, response.text
    error = response.json()["error"]
    assert error["param"] == field, error
    assert field.split("[")[0] in error["message"]


def test_bad_bodies_and_files(client):
    for content in (b"{not json", b"[1, 2]", b"[" * 100000):
        response = client.post("/v1/images/generations", content=content, headers={"Content-Type": "application/json"})
        assert response.status_code == 400 and response.json()["error"]["message"]
    response = client.post("/v1/images/edits", files={"image": ("x.png", b"not an image", "image/png")},
                           data={"prompt": "x"})
    assert response.status_code == 400 and response.json()["error"]["param"] == "image"


def test_edits_form_fields_are_checked(client):
    image = ("in.png", base64.b64decode(TINY_PNG), "image/png")
    for data, field in (({"prompt": "x", "loras": "[" * 100000}, "loras"),  # nested too deeply for json.loads
                        ({"prompt": "x", "mask": "not a file"}, "mask")):  # not left out: the edit would ignore it
        response = client.post("/v1/images/edits", files={"image": image}, data=data)
        assert response.status_code == 400 and response.json()["error"]["param"] == field, response.text


def test_ref_images_within_the_limits_are_decoded_and_used(client, ctx):
    refs = [np.full((SIZE, SIZE, 3), value, np.uint8) for value in (40, 200)]
    body = {"prompt": "a cat", "width": SIZE, "height": SIZE, "steps": 1, "seed": 2,
            "ref_images": [b64_png(ref) for ref in refs]}
    job = client.post("/v1/jobs", json=body).json()["id"]
    done = wait_for(lambda: (lambda s: s if s["state"] == "done" else None)(client.get(f"/v1/jobs/{job}").json()))
    expected = ctx.edit("a cat", refs, width=SIZE, height=SIZE, steps=1, seed=2)[0]
    np.testing.assert_array_equal(b64_pixels(done["images"][0]), expected)


def test_a1111_img2img_infotext_has_the_size_of_the_image(client):
    body = {"prompt": "a boat", "init_images": [b64_png(np.full((SIZE, SIZE, 3), 90, np.uint8))], "steps": 1}
    response = client.post("/sdapi/v1/img2img", json=body)  # no width or height: the init image's size
    assert response.status_code == 200, response.text
    assert f"Size: {SIZE}x{SIZE}," in json.loads(response.json()["info"])["infotexts"][0]


def test_a_finished_job_keeps_its_last_preview_frame_only(client):
    job = client.post("/v1/jobs", json={"prompt": "a tree", "width": SIZE, "height": SIZE, "steps": 4,
                                        "preview": True}).json()["id"]
    wait_for(lambda: client.get(f"/v1/jobs/{job}").json()["state"] == "done")
    with client.stream("GET", f"/v1/jobs/{job}/events") as stream:  # the replay of a finished job
        events = _events(stream)
    assert [data["step"] for name, data in events if name == "preview"] == [4]
    assert [name for name, _ in events][-1] == "done"


def test_errors_of_routing_and_query_parameters_have_the_usual_shape(client):
    response = client.get("/sdapi/v1/progress", params={"skip_current_image": "maybe"})
    assert response.status_code == 422 and response.json()["error"]["param"] == "skip_current_image"
    assert "skip_current_image" in response.json()["error"]["message"]
    for response in (client.get("/no/such/route"), client.put("/v1/models")):
        error = response.json()["error"]
        assert response.status_code in (404, 405) and error["message"] == response.json()["detail"], response.text


def test_a_stopping_server_answers_503(served):
    from starlette.testclient import TestClient

    from sdcpp_py.server import Settings, create_app

    app = create_app(served, Settings())
    with TestClient(app) as http:
        app.state.server.worker.stop()
        response = http.post("/v1/jobs", json={"prompt": "x", "width": SIZE, "height": SIZE, "steps": 1})
    assert response.status_code == 503 and "stopping" in response.json()["error"]["message"], response.text


@pytest.mark.parametrize("key", ["clé", "", " secret", "a\nb"])
def test_an_api_key_no_header_can_carry_is_refused_at_start(served, key):
    from sdcpp_py.server import Settings, create_app

    with pytest.raises(ValueError, match="API key must be printable ASCII"):
        create_app(served, Settings(api_key=key))


def test_the_api_key_is_required_except_for_health(served):
    openai = pytest.importorskip("openai")
    with serving(served, api_key="secret", max_body=1000) as url, httpx.Client(base_url=url) as http:
        assert http.get("/health").status_code == 200
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic secret"}):
            response = http.get("/v1/models", headers=headers)
            assert response.status_code == 401 and response.headers["WWW-Authenticate"] == "Bearer"
        assert http.get("/sdapi/v1/samplers").status_code == 401
        assert http.get("/v1/models", headers={"Authorization": "Bearer secret"}).status_code == 200
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=url + "/v1", api_key="wrong", max_retries=0).models.list()
        assert openai.OpenAI(base_url=url + "/v1", api_key="secret", max_retries=0).models.list().data
        too_large = http.post("/v1/jobs", content=b"x" * 2000, headers={"Authorization": "Bearer secret"})
        assert too_large.status_code == 413

        def chunks():  # no Content-Length: counted as it is read
            yield b'{"prompt": "' + b"x" * 2000 + b'"}'

        too_large = http.post("/v1/jobs", content=chunks(), headers={"Authorization": "Bearer secret"})
        assert too_large.status_code == 413


def test_sdcpp_serve_starts_and_stops(parts):
    with sdcpp_serve(*component_flags(parts), "-t", "1", "--model-name", "tiny") as (base, process):
        assert httpx.get(base + "/health").json()["model"] == "tiny"
    # uvicorn shuts down, then ends the process with the signal it caught.
    assert process.returncode in (0, -signal.SIGTERM)
    help_text = subprocess.run([sys.executable, "-m", "sdcpp_py.server", "--help"], capture_output=True, text=True,
                               check=True).stdout
    assert "--diffusion-model" in help_text and "--queue-size" in help_text


# -- several models: --config ------------------------------------------------------------------------------

def write_config(folder, models: dict) -> str:
    """A models.toml in ``folder``: {name: {key: value}}; strings are written as TOML strings."""
    lines = []
    for name, entry in models.items():
        lines.append(f"[models.{name}]")
        lines += [f"{key} = {json.dumps(value)}" for key, value in entry.items()]
    path = os.path.join(folder, "models.toml")
    with open(path, "w") as file:
        file.write("\n".join(lines) + "\n")
    return path


def relative_parts(parts, folder) -> dict:
    # Paths in a config are relative to its folder.
    return {name: os.path.relpath(path, folder) for name, path in parts.items()}


def test_models_of_a_config_by_name_loaded_lazily_at_most_one(parts, served, tmp_path):
    from sdcpp_py.server._models import Models

    gone = tmp_path / "gone.safetensors"
    gone.write_bytes(parts["diffusion_model"].read_bytes())
    files = relative_parts(parts, tmp_path)
    # The same files with another noise generator: other pixels, so the test sees which model answered.
    path = write_config(tmp_path, {"plain": dict(files, n_threads=2),
                                   "cpu-rng": dict(files, n_threads=2, rng="cpu", vae_decode_only=True, default=True),
                                   "gone": dict(files, diffusion_model="gone.safetensors", n_threads=2)})
    models = Models.from_config(path, max_loaded=1)
    gone.unlink()  # checked at startup; gone by its first use

    with sdcpp_py.Context(**parts, n_threads=2, rng="cpu", vae_decode_only=True) as cpu_rng, \
            serving(models, queue_size=1) as url, httpx.Client(base_url=url, timeout=60) as http:
        def loaded():
            return {m["id"] for m in http.get("/v1/models").json()["data"] if m["loaded"]}

        listing = http.get("/v1/models").json()["data"]
        assert [(m["id"], m["loaded"], m["default"]) for m in listing] == [
            ("plain", False, False), ("cpu-rng", False, True), ("gone", False, False)]
        want = dict(width=SIZE, height=SIZE, steps=1, seed=3)
        expected = {"plain": served.txt2img("a lighthouse", **want)[0],
                    "cpu-rng": cpu_rng.txt2img("a lighthouse", **want)[0]}
        assert not np.array_equal(expected["plain"], expected["cpu-rng"])

        body = {"prompt": "a lighthouse", "size": f"{SIZE}x{SIZE}", "steps": 1, "seed": 3}
        response = http.post("/v1/images/generations", json=dict(body, model="plain"))
        assert response.status_code == 200, response.text
        np.testing.assert_array_equal(b64_pixels(response.json()["data"][0]["b64_json"]), expected["plain"])
        assert loaded() == {"plain"}
        a1111 = dict(want, prompt="a lighthouse", override_settings={"sd_model_checkpoint": "plain"})
        response = http.post("/sdapi/v1/txt2img", json=a1111)
        np.testing.assert_array_equal(b64_pixels(response.json()["images"][0]), expected["plain"])

        job = http.post("/v1/jobs", json=dict(want, prompt="a lighthouse", model="cpu-rng")).json()
        with http.stream("GET", f"/v1/jobs/{job['id']}/events") as stream:
            events = _events(stream)
        assert [name for name, _ in events][:3] == ["queued", "running", "loading"]
        np.testing.assert_array_equal(b64_pixels(events[-1][1]["images"][0]), expected["cpu-rng"])
        assert loaded() == {"cpu-rng"}  # --max-loaded 1: the first was closed

        response = http.post("/v1/images/generations", json=body)  # no model: the one marked default
        np.testing.assert_array_equal(b64_pixels(response.json()["data"][0]["b64_json"]), expected["cpu-rng"])
        assert [(m["model_name"], m["loaded"]) for m in http.get("/sdapi/v1/sd-models").json()] == [
            ("plain", False), ("cpu-rng", True), ("gone", False)]

        for path, request, field in (
                ("/v1/images/generations", dict(body, model="other"), "model"),
                ("/v1/jobs", {"prompt": "x", "model": "other"}, "model"),
                ("/sdapi/v1/txt2img", {"prompt": "x", "sd_model_checkpoint": "other"}, "sd_model_checkpoint")):
            response = http.post(path, json=request)
            assert response.status_code == 404 and response.json()["error"]["param"] == field, response.text
            assert "'plain', 'cpu-rng', 'gone'" in response.json()["error"]["message"]

        # A model that cannot load fails its job, not the server.
        response = http.post("/v1/images/generations", json=dict(body, model="gone"))
        assert response.status_code == 500 and "model 'gone' could not be loaded" in response.text, response.text
        response = http.post("/v1/images/generations", json=dict(body, model="plain"))
        np.testing.assert_array_equal(b64_pixels(response.json()["data"][0]["b64_json"]), expected["plain"])
    assert not any(model.loaded for model in models)  # the app closed what it loaded


BAD_CONFIGS = [
    ({"stepz": 2}, "unknown key 'stepz'"),
    ({"n_threads": "two"}, "n_threads must be an int"),
    ({"weight_type": "q9"}, "weight_type='q9'"),
    ({"flash_attn": 1}, "flash_attn"),
    ({"vae": "missing.safetensors"}, "vae"),
    ({"lora_dir": "no-such-folder"}, "lora_dir"),
    ({"default": "yes"}, "default must be true or false"),
]


@pytest.mark.parametrize("change,message", BAD_CONFIGS, ids=[m.split()[0] for _, m in BAD_CONFIGS])
def test_a_bad_config_names_the_model_and_key(parts, tmp_path, change, message):
    from sdcpp_py.server._models import read_config

    path = write_config(tmp_path, {"good": relative_parts(parts, tmp_path),
                                   "bad": dict(relative_parts(parts, tmp_path), **change)})
    with pytest.raises(ValueError) as error:
        read_config(path)
    assert "models.toml: model 'bad': " in str(error.value) and message in str(error.value), str(error.value)


def test_a_config_that_is_not_toml_text_names_the_file(tmp_path):
    # tomllib's UnicodeDecodeError (a binary file) and RecursionError (deep nesting) escaped as they were.
    from sdcpp_py.server._models import read_config

    binary, deep = tmp_path / "binary.toml", tmp_path / "deep.toml"
    binary.write_bytes(b'a = "\xff\xfe"\n')
    deep.write_text("x = " + "[" * 5000 + "]" * 5000 + "\n")
    for path, reason in ((binary, "not UTF-8 text"), (deep, "nested too deeply")):
        with pytest.raises(ValueError, match=f"{path.name}: not valid TOML: {reason}"):
            read_config(path)


def test_sdcpp_serve_config_errors_are_one_line_with_status_2(parts, tmp_path):
    path = write_config(tmp_path, {"tiny": dict(relative_parts(parts, tmp_path), n_threads=0)})
    for extra in ([], ["--diffusion-model", str(parts["diffusion_model"])]):
        result = subprocess.run([sys.executable, "-m", "sdcpp_py.cli", "serve", "--config", path, *extra],
                                capture_output=True, text=True, timeout=60)
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2 and len(lines) == 1, result.stderr
        if extra:
            assert "drop --diffusion-model" in lines[0]
        else:
            assert "model 'tiny'" in lines[0] and "n_threads" in lines[0]


# -- worker processes: --workers, --devices ----------------------------------------------------------------

def test_worker_processes_run_jobs_side_by_side_and_a_killed_one_loses_only_its_job(parts, ctx):
    flags = [*component_flags(parts), "-t", "1", "--workers", "2", "--devices", "0,1", "--queue-size", "2"]
    with sdcpp_serve(*flags) as (base, server), httpx.Client(base_url=base, timeout=60) as http:
        workers = wait_for(lambda: (lambda ws: ws if all(w["state"] == "ready" for w in ws) else None)(
            http.get("/health").json()["workers"]), 60)
        # Each worker process saw its device before it imported the package, and has its -t threads.
        assert [w["environment"] for w in workers] == [
            {"CUDA_VISIBLE_DEVICES": device, "GGML_VK_VISIBLE_DEVICES": device} for device in ("0", "1")]
        assert [w["n_threads"] for w in workers] == [1, 1]
        pids = [w["pid"] for w in workers]
        assert len(set(pids)) == 2 and server.pid not in pids
        assert http.get("/v1/models").json()["data"][0]["loaded"]

        long = {"prompt": "x", "width": SIZE, "height": SIZE, "steps": LONG}
        first, second = (http.post("/v1/jobs", json=long).json()["id"] for _ in range(2))
        running = wait_for(lambda: (lambda both: both if all(s["state"] == "running" and s["step"] >= 1
                                                             for s in both) else None)(
            [http.get(f"/v1/jobs/{job}").json() for job in (first, second)]), 60)
        assert sorted(status["worker"] for status in running) == [0, 1]  # both at once
        queued = http.post("/v1/jobs", json={"prompt": "a tree", "width": SIZE, "height": SIZE, "steps": 2,
                                             "seed": 11}).json()
        assert queued["state"] == "queued"

        victim = running[0]
        os.kill(pids[victim["worker"]], signal.SIGKILL)
        failed = wait_for(lambda: (lambda s: s if s["state"] == "failed" else None)(
            http.get(f"/v1/jobs/{victim['id']}").json()))
        assert "killed by SIGKILL" in failed["error"] and "worker" in failed["error"]
        # The queued job runs on the restarted worker while the other long job goes on, untouched.
        done = wait_for(lambda: (lambda s: s if s["state"] == "done" else None)(
            http.get(f"/v1/jobs/{queued['id']}").json()), 60)
        expected = ctx.txt2img("a tree", width=SIZE, height=SIZE, steps=2, seed=11)[0]
        np.testing.assert_array_equal(b64_pixels(done["images"][0]), expected)
        survivor = running[1]["id"]
        assert http.get(f"/v1/jobs/{survivor}").json()["state"] == "running"
        http.delete(f"/v1/jobs/{survivor}")
        wait_for(lambda: http.get(f"/v1/jobs/{survivor}").json()["state"] == "cancelled", 10)
        replaced = http.get("/health").json()["workers"][victim["worker"]]
        assert replaced["restarts"] == 1 and replaced["pid"] not in pids
        assert replaced["last_exit"] == "was killed by SIGKILL"
        # One that dies while idle is started again at once, not when the next job comes.
        idle = 1 - victim["worker"]
        os.kill(pids[idle], signal.SIGKILL)
        again = wait_for(lambda: (lambda w: w if w["restarts"] == 1 and w["state"] == "ready" else None)(
            http.get("/health").json()["workers"][idle]), 60)
        assert again["pid"] != pids[idle] and again["last_exit"] == "was killed by SIGKILL"
        pids.append(again["pid"])
    assert server.returncode in (0, -signal.SIGTERM)
    for pid in (*pids, replaced["pid"]):  # the workers ended with their server
        wait_for(lambda: not _alive(pid), 10)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie child of the (ended) server is reaped by init soon; /proc says whether it still runs.
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(") ")[-1][:1] != "Z"
    except OSError:
        return False


def test_queue_size_zero_takes_a_job_whenever_the_worker_is_free(served):
    with serving(served, queue_size=0) as url, httpx.Client(base_url=url, timeout=60) as http:
        long = {"prompt": "x", "width": SIZE, "height": SIZE, "steps": LONG}
        first = http.post("/v1/jobs", json=long)
        assert first.status_code == 202, first.text
        assert http.post("/v1/jobs", json=long).status_code == 429  # busy, and no room to wait
        http.delete(f"/v1/jobs/{first.json()['id']}")
        wait_for(lambda: not http.get("/health").json()["running"], 10)
        done = http.post("/v1/images/generations", json={"prompt": "x", "size": f"{SIZE}x{SIZE}", "steps": 1})
        assert done.status_code == 200, done.text


def test_worker_settings_are_checked(served, parts):
    from sdcpp_py.server import Models, Settings, create_app

    models = Models([Model.from_options("tiny", dict(parts), default=True)])
    for devices, message in (("0,1", "not the text"), ([], "one device per worker"), (["0", " "], "one device")):
        with pytest.raises(ValueError, match=message):
            create_app(models, Settings(workers=2, devices=devices))
    with pytest.raises(ValueError, match="set workers"):
        create_app(models, Settings(devices=["0"]))
    with pytest.raises(ValueError, match="not a loaded Context"):
        create_app(served, Settings(workers=1))


def test_workers_and_devices_flags_are_checked(parts):
    for flags, message in ((["--workers", "0"], "--workers must be at least 1"),
                           (["--devices", "0,,1"], "--devices '0,,1'"),):
        result = subprocess.run([sys.executable, "-m", "sdcpp_py.cli", "serve", *component_flags(parts), *flags],
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 2 and message in result.stderr, result.stderr


def test_a_lora_that_does_not_fit_is_a_400_and_the_model_stays(parts, served, tmp_path):
    # A LoRA whose .diff has the wrong size failed a check inside the core, after which the context refused every
    # call: a 500, then a reload of the model. Patch 0024 refuses it before the call, the context kept.
    from sdcpp_py import _formats
    from sdcpp_py.server._models import Model, Models

    loras = tmp_path / "loras"
    loras.mkdir()
    _formats.write_safetensors(loras / "bad.safetensors", {
        "diffusion_model.double_blocks.0.img_mlp.0.diff": np.zeros((10, 10), np.float16)})
    models = Models([Model.from_options("tiny", dict(parts, n_threads=2, lora_dir=str(loras)), default=True)])
    body = {"size": f"{SIZE}x{SIZE}", "steps": 1, "seed": 3}
    with serving(models, queue_size=1) as url, httpx.Client(base_url=url, timeout=60) as http:
        response = http.post("/v1/images/generations", json=dict(body, prompt="a lighthouse <lora:bad:1>"))
        assert response.status_code == 400 and "bad.safetensors' does not fit this model" in response.text, \
            response.text
        context = models.find("tiny").context
        response = http.post("/v1/images/generations", json=dict(body, prompt="a lighthouse"))
        assert response.status_code == 200, response.text
        assert models.find("tiny").context is context
        expected = served.txt2img("a lighthouse", width=SIZE, height=SIZE, steps=1, seed=3)[0]
        np.testing.assert_array_equal(b64_pixels(response.json()["data"][0]["b64_json"]), expected)


def test_a_context_that_failed_inside_the_core_is_loaded_again(parts):
    # A call that fails inside the core leaves a context that refuses every later call (Context.usable false):
    # the server kept it, so every later request for the model failed until a restart.
    from sdcpp_py.server._models import Model, Models

    class FailedContext:
        usable = False
        closed = False

        def close(self):
            self.closed = True

    models = Models([Model.from_options("tiny", dict(parts, n_threads=2), default=True)])
    model = models.find("tiny")
    loaded = None
    try:
        loaded = models.context(model)
        assert models.context(model) is loaded
        failed = model.context = FailedContext()
        models._lru["tiny"] = model
        reloaded = models.context(model)
        assert failed.closed and reloaded is not failed and reloaded.usable and model.context is reloaded
    finally:
        if loaded is not None:
            loaded.close()
        models.close()


def test_uploaded_16_bit_images_keep_their_range():
    # The server's own decoding converted a 16-bit grey PNG (a depth map) with PIL, which clips it to white.
    from sdcpp_py.server._fields import FieldError, image

    gradient = np.tile(np.linspace(0, 65535, 64).astype(np.uint16), (8, 1))
    encoded = io.BytesIO()
    Image.fromarray(gradient).save(encoded, "PNG")
    rgb = image("init_image", encoded.getvalue(), "RGB", 1 << 20)
    assert rgb.shape == (8, 64, 3) and rgb[0, 0, 0] == 0 and rgb[0, -1, 0] == 255 and 120 < rgb[0, 32, 0] < 135
    grey = image("mask", encoded.getvalue(), "mask", 1 << 20)
    np.testing.assert_array_equal(grey, rgb[:, :, 0])
    floats = io.BytesIO()
    Image.fromarray(gradient.astype(np.float32)).save(floats, "TIFF")
    with pytest.raises(FieldError, match="mode 'F'"):
        image("init_image", floats.getvalue(), "RGB", 1 << 20)
