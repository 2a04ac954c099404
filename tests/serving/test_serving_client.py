"""The Python client and the CLI against the app served by uvicorn on 127.0.0.1 (in-process backend, no Ray)."""

from __future__ import annotations

import json
import socket
import threading
import time

import numpy as np
import pytest
from serving_helpers import digit_images, png_bytes

from serving.client import ExplainClient, ServiceError, main

TOKEN = "client-test-token"


@pytest.fixture(scope="module")
def server_url(service):
    import uvicorn

    from serving.api import make_api
    from serving.jobs import JobRunner
    from serving.service import LocalBackend

    backend = LocalBackend(service)
    api = make_api(backend, JobRunner(backend=backend), service.args, token=TOKEN)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(api, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.started, "uvicorn did not start"
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


@pytest.fixture
def images(tmp_path):
    paths = []
    for i, img in enumerate(digit_images(2)):
        p = tmp_path / f"digit{i}.png"
        p.write_bytes(png_bytes(img))
        paths.append(p)
    return paths


def test_client_routes(server_url, images):
    with ExplainClient(server_url, token=TOKEN) as c:
        assert c.health()["status"] == "ok"
        assert "gradcam" in [m["name"] for m in c.methods()["methods"]]
        one = c.explain(images[0], "gradcam", target=4)
        assert one["explanations"][0]["label"] == 4
        assert c.explain(images[0].read_bytes(), "gradcam", target=4) == one
        two = c.explain([str(p) for p in images], "gradient", target=[1, 2])
        assert [e["label"] for e in two["explanations"]] == [1, 2]
        arrays = c.explain(digit_images(2), "center")
        assert len(arrays["explanations"]) == 2
        assert len(c.predict(images[0])["predictions"]) == 1
        job = c.explain(images, "feature_inversion", params={"stage2_iterations": 3}, asynchronous=True)
        assert len(job["explanations"]) == 2


def test_client_errors(server_url, images):
    with ExplainClient(server_url, token=TOKEN) as c:
        with pytest.raises(ServiceError) as e:
            c.explain(images[0], "gradcam", target=99)
        assert e.value.status == 422 and e.value.code == "target_out_of_range"
        with pytest.raises(ServiceError) as e:
            c.explain(images[0], "nope")
        assert e.value.status == 404
    with ExplainClient(server_url, token="wrong") as c:
        with pytest.raises(ServiceError) as e:
            c.methods()
        assert e.value.status == 401


def test_cli_explains_and_writes_saliency(server_url, images, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("INTERP_RAY_SERVE_TOKEN", TOKEN)
    out = tmp_path / "out.json"
    code = main(["--url", server_url, str(images[0]), "--method", "occlusion", "--param", "window=2",
                 "--target", "3", "-o", str(out), "--saliency-dir", str(tmp_path / "maps")])
    assert code == 0, capsys.readouterr().err
    result = json.loads(out.read_text())
    assert result["method"] == "occlusion" and result["explanations"][0]["label"] == 3
    assert (tmp_path / "maps" / "digit0.occlusion.png").is_file()
    assert main(["--url", server_url, "--list-methods"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert "occlusion" in [m["name"] for m in listed["methods"]]
    assert main(["--url", server_url, str(images[0]), "--predict"]) == 0
    assert main(["--url", server_url, *map(str, images), "--method", "feature_inversion", "--async",
                 "--params", '{"stage2_iterations": 2}']) == 0


def test_cli_exit_codes(server_url, images, monkeypatch, capsys):
    monkeypatch.setenv("INTERP_RAY_SERVE_TOKEN", TOKEN)
    assert main(["--url", server_url, str(images[0]), "--method", "gradcam", "--target", "42"]) == 2
    assert "target_out_of_range" in capsys.readouterr().err
    assert main(["--url", server_url, str(images[0])]) == 2  # no --method
    assert main(["--url", server_url, "missing.png", "--method", "gradcam"]) == 2
    monkeypatch.delenv("INTERP_RAY_SERVE_TOKEN")
    assert main(["--url", server_url, "--list-methods"]) == 2  # 401
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert main(["--url", f"http://127.0.0.1:{port}", "--list-methods"]) == 1
    assert "error:" in capsys.readouterr().err


def test_array_payloads_are_tensors():
    from serving.client import _image_payload

    x = np.zeros((2, 1, 8, 8), dtype=np.float32)
    assert np.asarray(_image_payload(x)["tensor"]).shape == (2, 1, 8, 8)
    assert np.asarray(_image_payload(list(x))["tensor"]).shape == (2, 1, 8, 8)
