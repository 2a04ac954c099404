"""The web page in a real browser: headless Chromium (Debian's, through Playwright) against the service's app on
127.0.0.1 (uvicorn in a thread, over the in-process backend: the same FastAPI app the Ingress serves; no Ray).

Each test compares what the page shows with what the API answers for the same image and parameters, and writes a
screenshot of each state under its tmp_path.
"""

from __future__ import annotations

import io
import shutil
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from serving_helpers import local_app

CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]
SAMPLES = Path(__file__).resolve().parents[2] / "serving" / "web" / "samples"
TIMEOUT_MS = 120_000
TOKEN = "page-token"
# Cheap settings where the defaults are slow, and a τ low enough that the random test FLINT has relevant attributes.
FORM = {"feature_inversion": {"stage1_iterations": 2, "stage2_iterations": 2}, "flint": {"tau": 1000}}

try:
    from playwright.sync_api import sync_playwright
except ImportError:  # pragma: no cover - the dev extras install it
    sync_playwright = None

pytestmark = pytest.mark.skipif(sync_playwright is None or not CHROMIUM.exists(),
                                reason="needs the playwright package and /usr/bin/chromium (scripts/env.sh installs "
                                       "Debian's chromium)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """uvicorn serving ``app`` on a free port of 127.0.0.1 in a thread, stopped on exit."""

    def __init__(self, app):
        import uvicorn

        self.port = free_port()
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning",
                                                    lifespan="off"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.05)
        return f"http://127.0.0.1:{self.port}"

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


@pytest.fixture(scope="module")
def url(service):
    with Server(local_app(service)) as u:
        yield u


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    profile = tmp_path_factory.mktemp("chromium-profile")
    with sync_playwright() as p:
        context = p.chromium.launch_persistent_context(str(profile), executable_path=str(CHROMIUM), headless=True,
                                                       args=ARGS, viewport={"width": 1200, "height": 1000})
        try:
            yield context
        finally:
            context.close()
    shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture
def page(browser):
    page = browser.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    yield page
    page.close()
    assert not errors, errors  # no script error on the page, whatever the test checked


def client_for(url: str, token: str | None = None):
    from serving.client import ExplainClient

    return ExplainClient(url, token=token or "", timeout=120)


def post_file(url: str, name: str, data: bytes, mime: str, token: str = "") -> tuple[int, str]:
    """What the API answers to the multipart upload the page sends."""
    import httpx

    headers = {"Authorization": f"Bearer {token}"} if token else {}
    r = httpx.post(f"{url}/v1/predict", files={"image": (name, data, mime)}, headers=headers, timeout=60)
    return r.status_code, r.json()["error"]["message"] if r.status_code >= 400 else ""


def open_with_sample(page, url: str, sample: str = "digits_1.png") -> None:
    page.goto(url + "/")
    page.click(f'#samples button[data-file="{sample}"]')
    page.wait_for_selector("#top li")


def fill_form(page, values: dict) -> None:
    for name, value in values.items():
        page.fill(f"#param-{name}", str(value))


def error_text(page) -> str:
    page.wait_for_selector("#error:not([hidden])")
    return page.inner_text("#error")


# --------------------------------------------------------------------------- each method


def test_each_served_method_shows_its_explanation(page, url, service, tmp_path):
    png = (SAMPLES / "digits_1.png").read_bytes()
    c, h, w = service.model.input_shape
    with client_for(url) as api:
        predicted = api.predict(png)["predictions"][0]
        methods = {m["name"]: m for m in api.methods()["methods"]}
        open_with_sample(page, url)
        top = page.locator("#top li").first
        assert int(top.get_attribute("data-class")) == predicted["label"]
        page.screenshot(path=str(tmp_path / "predicted.png"), full_page=True)
        for name, meta in methods.items():
            page.select_option("#method", name)
            fill_form(page, FORM.get(name, {}))
            page.click("#explain")
            if meta["slow"]:  # through the jobs API, its status shown while it runs
                page.wait_for_function("document.getElementById('status').textContent.startsWith('job ')")
            page.wait_for_selector("#explained-label, #error:not([hidden])")
            assert page.locator("#error").is_hidden(), page.inner_text("#error")
            (want,) = api.explain(png, name, params=FORM.get(name))["explanations"]
            assert int(page.get_attribute("#explained-label", "data-label")) == want["label"], name
            whose = want["explains"]   # whose prediction: in words, with that prediction
            assert page.get_attribute("#explains", "data-model") == whose["model"], name
            assert f"{whose['label_name']} ({100 * whose['probability']:.1f}%)" in page.inner_text("#explains"), name
            if want["saliency"] is not None:
                size = page.eval_on_selector("#overlay", "c => [c.width, c.height]")
                assert size == [w, h], name  # the overlay has the image's size
            if want["attributes"] is not None:
                shown = page.eval_on_selector_all("#attributes li", "els => els.map(e => e.dataset.attribute)")
                assert shown and shown == sorted(want["attributes"], key=want["attributes"].get, reverse=True)
            if want["path"] is not None:
                assert f"level-1 cluster {want['path']['level1']} → level-2 cluster " \
                       f"{want['path']['level1']}.{want['path']['level2']}" in page.inner_text("#route")
            if want["sentence"] is not None:
                assert page.inner_text("#sentence") == want["sentence"]
            if meta["slow"]:
                page.click("#draw")
            page.wait_for_function("(() => { const i = document.getElementById('picture');"
                                   " return i && i.complete && i.naturalWidth > 0; })()")
            picture = page.eval_on_selector("#picture", "i => [i.naturalWidth, i.naturalHeight]")
            from PIL import Image

            with Image.open(io.BytesIO(api.picture(png, name, params=FORM.get(name)))) as im:
                assert picture == list(im.size), name  # the report's figure, as curl gets it
            page.screenshot(path=str(tmp_path / f"method_{name}.png"), full_page=True)
    assert len(list(tmp_path.glob("method_*.png"))) == len(methods)


def test_the_page_says_whose_prediction_flint_explains(page, flint_services, tmp_path):
    """A FLINT whose f is not the served classifier: the page says so in words, with f's prediction, the served
    classifier's, and whether they agree."""
    with Server(local_app(flint_services["own"])) as url, client_for(url) as api:
        answers = {}
        for sample in ("digits_1.png", "digits_2.png", "digits_3.png"):
            if (SAMPLES / sample).exists():
                answers[sample] = api.explain((SAMPLES / sample).read_bytes(), "flint")["explanations"][0]["explains"]
        # a sample on which f and the served classifier disagree, when there is one
        sample = next((k for k, w in answers.items() if not w["agrees"]), next(iter(answers)))
        w = answers[sample]
        open_with_sample(page, url, sample)
        page.select_option("#method", "flint")
        page.click("#explain")
        page.wait_for_selector("#explains")
        text = page.inner_text("#explains")
        assert page.get_attribute("#explains", "data-model") == "own"
        assert text.startswith(f"explains the prediction of {w['about']}, not the served classifier's: "), text
        assert f"{w['label_name']} ({100 * w['probability']:.1f}%)" in text
        assert f"the served classifier predicts {w['classifier_label_name']} " \
               f"({100 * w['classifier_probability']:.1f}%)" in text
        assert text.endswith("(the same class)" if w["agrees"] else "(another class)"), text
        page.screenshot(path=str(tmp_path / "flint_own_predictor.png"), full_page=True)


def test_the_captioners_answer_shows_its_class_name_and_neurons(page, semantic_service, scene_frame_png, tmp_path):
    with Server(local_app(semantic_service)) as url, client_for(url) as api:
        (want,) = api.explain(scene_frame_png, "semantic")["explanations"]
        page.goto(url + "/")
        page.wait_for_selector("#method option", state="attached")
        page.set_input_files("#file", files=[{"name": "frame.png", "mimeType": "image/png",
                                              "buffer": scene_frame_png}])
        page.wait_for_selector("#top li")
        page.select_option("#method", "semantic")
        page.click("#explain")
        page.wait_for_selector("#explained-label")
        assert want["label_name"] and page.inner_text("#explained-label") == f"explained class: {want['label_name']}"
        assert page.inner_text("#sentence") == want["sentence"]
        assert want["neurons"]   # the specimen's labelled neurons drive its captions
        shown = page.eval_on_selector_all("#neurons li", "els => els.map(e => [e.dataset.neuron, e.textContent])")
        assert shown == [[n, f"neuron {n}: {label}"] for n, label in want["neurons"].items()]
        page.screenshot(path=str(tmp_path / "captioner.png"), full_page=True)


# --------------------------------------------------------------------------- errors


def test_api_errors_are_shown_as_their_message(page, url, service, tmp_path):
    from PIL import Image

    page.goto(url + "/")
    page.wait_for_selector("#method option", state="attached")
    # not an image
    status, message = post_file(url, "notes.txt", b"just some text", "text/plain")
    page.set_input_files("#file", files=[{"name": "notes.txt", "mimeType": "text/plain", "buffer": b"just some text"}])
    assert error_text(page) == f"{message} (HTTP {status})" and status == 400
    page.screenshot(path=str(tmp_path / "not_an_image.png"), full_page=True)
    # the wrong size
    buf = io.BytesIO()
    Image.fromarray(np.zeros((16, 16), dtype=np.uint8)).save(buf, format="PNG")
    status, message = post_file(url, "big.png", buf.getvalue(), "image/png")
    page.set_input_files("#file", files=[{"name": "big.png", "mimeType": "image/png", "buffer": buf.getvalue()}])
    assert error_text(page) == f"{message} (HTTP {status})" and status == 422 and "8×8" in message
    page.screenshot(path=str(tmp_path / "wrong_size.png"), full_page=True)
    # over the body limit (the message states the body's size, which differs between clients' multipart framing)
    blob = np.random.default_rng(0).integers(0, 255, service.args.max_body_bytes + 10_000, dtype=np.uint8).tobytes()
    status, message = post_file(url, "huge.png", blob, "image/png")
    page.set_input_files("#file", files=[{"name": "huge.png", "mimeType": "image/png", "buffer": blob}])
    shown = error_text(page)
    assert status == 413 and shown.endswith(f"over the limit of {service.args.max_body_bytes} bytes (HTTP 413)")
    page.screenshot(path=str(tmp_path / "oversize.png"), full_page=True)
    # an unknown method (the page only offers served ones: add one as a stale page would have it)
    open_with_sample(page, url)
    page.evaluate("() => { const o = document.createElement('option'); o.value = o.textContent = 'nope';"
                  " document.getElementById('method').append(o); }")
    page.select_option("#method", "nope")
    with client_for(url) as api:
        from serving.client import ServiceError

        with pytest.raises(ServiceError) as e:
            api.explain((SAMPLES / "digits_1.png").read_bytes(), "nope")
    page.click("#explain")
    assert error_text(page) == f"{e.value.message} (HTTP 404)"
    page.screenshot(path=str(tmp_path / "unknown_method.png"), full_page=True)


def test_with_a_token_the_page_asks_for_it_and_sends_it(browser, service, tmp_path):
    page = browser.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    try:
        with Server(local_app(service, token=TOKEN)) as url:
            page.goto(url + "/")
            page.wait_for_selector("#auth:not([hidden])")
            assert error_text(page) == "missing or wrong bearer token (Authorization: Bearer …) (HTTP 401)"
            page.screenshot(path=str(tmp_path / "token_asked.png"), full_page=True)
            page.fill("#token", "wrong")
            page.click("#auth-form button")
            page.wait_for_function("document.getElementById('error').textContent.includes('HTTP 401')")
            page.fill("#token", TOKEN)
            page.click("#auth-form button")
            page.wait_for_selector("#method option", state="attached")
            assert page.locator("#auth").is_hidden() and page.locator("#error").is_hidden()
            page.click('#samples button[data-file="digits_1.png"]')
            page.wait_for_selector("#top li")
            page.screenshot(path=str(tmp_path / "token_given.png"), full_page=True)
    finally:
        page.close()
