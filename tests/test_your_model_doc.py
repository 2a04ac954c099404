"""docs/your_model.md, run as a new user would run it: its files written and its commands run, in order, in one
folder, on a model trained outside interp-ray with ImageNet mean/std normalisation, over an image folder and a
Parquet copy whose ClassLabel order differs (issue 36's acceptance).

The page is read, not copied: each fenced ``python``/``yaml`` block whose first line is ``# <file>`` is written to that
file; each ``$ command`` of a ``console`` block is run with bash, and the output lines the page shows under it must
appear in what the command printed, numbers, digests and spacing aside (``error: …`` lines: the one line on stderr,
exit code 2). A block preceded by ``<!-- not run … -->`` is skipped (the comment says why). ``$REPO`` is this
repository and ``/tmp/modelspec-doc`` the test's folder; the images are generated (coloured squares, one colour per
class, so the model learns them in seconds).

Ray stages reach the session's local Ray through ``RAY_ADDRESS`` (one Ray per test session); ``interp-ray serve`` runs
in the background on a free port of 127.0.0.1 (the page's 8000 replaced), and the ``curl`` commands ask it.

The fast test runs the page up to its Ray stages (the model's own code, layers, import-model) and every one-line
refusal; the slow one runs the whole page for ``my_models:build`` and again for ``torchvision:mobilenet_v3_small``
(the substitutions the page names).
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "your_model.md"
DOC_DIR = "/tmp/modelspec-doc"
BIN = Path(sys.executable).parent
CLASSES = ("cat", "dog", "fox")
PARQUET_ORDER = ["fox", "cat", "dog"]
IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
SERVE_TIMEOUT_S = 300
LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ ")
# What the page says to change for its torchvision model (section "The example").
TORCHVISION = {"my_models.build(num_classes=len(train.classes))":
               "torchvision.models.mobilenet_v3_small(num_classes=len(train.classes))",
               "model.pt": "mobilenet.pt", "my_models:build": "torchvision:mobilenet_v3_small",
               "ckpt/small": "ckpt/mobilenet"}


@dataclass
class Step:
    kind: str                       # "file" or "run"
    text: str                       # the file's content or the command
    name: str = ""                  # the file's name
    expected: list[str] = field(default_factory=list)
    section: str = ""


def doc_steps(text: str) -> list[Step]:
    """The page's files and commands, in order."""
    steps: list[Step] = []
    section = ""
    pattern = re.compile(r"^(## [^\n]*)$|(<!-- not run[^>]*-->\n)?^```(\w+)\n(.*?)^```", re.S | re.M)
    for m in pattern.finditer(text):
        if m.group(1):
            section = m.group(1)
            continue
        skipped, lang, body = m.group(2), m.group(3), m.group(4)
        if skipped:
            continue
        first = body.splitlines()[0] if body else ""
        named = re.match(r"# ([\w.]+\.(?:py|yaml))\b", first)
        if lang in ("python", "yaml") and named:
            steps.append(Step("file", body, name=named.group(1), section=section))
        elif lang == "console":
            lines = body.splitlines()
            i = 0
            while i < len(lines):
                if not lines[i].startswith("$ "):
                    i += 1
                    continue
                cmd = lines[i][2:]
                while cmd.endswith("\\"):
                    i += 1
                    cmd = cmd[:-1] + " " + lines[i].strip()
                i += 1
                expected = []
                while i < len(lines) and not lines[i].startswith("$ "):
                    expected.append(lines[i])
                    i += 1
                steps.append(Step("run", cmd, expected=expected, section=section))
    return steps


def masked(line: str) -> str:
    """A line with what changes from run to run (numbers, digests) and spacing taken out."""
    line = re.sub(r"\b[0-9a-f]{12,16}\b", "#", line)
    line = re.sub(r"\d+(\.\d+)?", "#", line)
    return re.sub(r"\s+", " ", line).strip()


def make_images(folder: Path, seed: int = 0) -> None:
    """The page's data: images/{train,val,test}/<class>/*.png (64×64 RGB noise with a square of the class's colour
    channel) and images_parquet/<split>-00000-of-00001.parquet, the same images as Hugging Face writes them, labels
    in the ClassLabel order fox, cat, dog."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image

    rng = np.random.default_rng(seed)
    (folder / "images_parquet").mkdir(parents=True)
    for split, n in (("train", 24), ("val", 8), ("test", 8)):
        rows = []
        for c, name in enumerate(CLASSES):
            (folder / "images" / split / name).mkdir(parents=True)
            for i in range(n):
                img = rng.integers(0, 90, (64, 64, 3)).astype(np.uint8)
                y, x = rng.integers(8, 40, 2)
                img[y:y + 20, x:x + 20, c] = 230
                path = folder / "images" / split / name / f"{i:03d}.png"
                Image.fromarray(img).save(path)
                rows.append((path.read_bytes(), name))
        meta = {"info": {"features": {"image": {"_type": "Image"},
                                      "label": {"names": PARQUET_ORDER, "_type": "ClassLabel"}}}}
        image_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
        table = pa.table({"image": pa.array([{"bytes": b, "path": None} for b, _ in rows], image_type),
                          "label": pa.array([PARQUET_ORDER.index(name) for _, name in rows], pa.int64())})
        pq.write_table(table.replace_schema_metadata({"huggingface": json.dumps(meta)}),
                       folder / "images_parquet" / f"{split}-00000-of-00001.parquet")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Walk:
    """The page's steps run in ``folder``, with ``replace`` applied to every file and command."""

    def __init__(self, folder: Path, replace: dict[str, str], *, address: str | None = None,
                 check_output: bool = True, in_process: bool = False):
        self.folder, self.replace, self.check_output, self.in_process = folder, replace, check_output, in_process
        self.env = dict(os.environ, PATH=f"{BIN}:{os.environ['PATH']}", RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0",
                        PYTHONPATH=os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]))
        self.env.pop("RAY_ADDRESS", None)
        if address:
            self.env["RAY_ADDRESS"] = address
        self.serve: subprocess.Popen | None = None
        self.port = free_port()
        self.log: list[str] = []

    def sub(self, text: str) -> str:
        for old, new in self.replace.items():
            text = text.replace(old, new)
        return text.replace("127.0.0.1:8000", f"127.0.0.1:{self.port}").replace("port: 8000", f"port: {self.port}")

    def run(self, step: Step) -> subprocess.CompletedProcess | None:
        if step.kind == "file":
            (self.folder / step.name).write_text(self.sub(step.text))
            return None
        cmd = self.sub(step.text)
        if cmd.startswith("interp-ray serve "):
            self.start_serve(cmd)
            return None
        t0 = time.monotonic()
        if self.in_process and cmd.startswith("interp-ray ") and not any(c in cmd for c in "&|;<>$`"):
            proc = self.run_in_process(cmd)
        else:
            proc = subprocess.run(["bash", "-c", cmd], cwd=self.folder, env=self.env, capture_output=True,
                                  text=True, timeout=900)
        self.log.append(f"$ {cmd}  [{time.monotonic() - t0:.1f} s, exit {proc.returncode}]\n{proc.stdout}"
                        f"{proc.stderr if proc.returncode else ''}")
        errors = [e for e in step.expected if e.startswith("error: ")]
        if errors:
            # the one line, after whatever the job logged (timestamped lines: a class order translated, …)
            err = [line for line in proc.stderr.strip().splitlines() if not LOG_LINE.match(line)]
            assert proc.returncode == 2 and len(err) == 1 and err[0].startswith("error: "), (cmd, proc.stderr[-3000:])
            if self.check_output:
                assert masked(err[0]) == masked(self.sub(errors[0])), (cmd, err[0])
            return proc
        assert proc.returncode == 0, (cmd, proc.stdout[-2000:], proc.stderr[-4000:])
        if self.check_output:
            got = {masked(line) for line in proc.stdout.splitlines()}
            for line in step.expected:
                if line.strip() and "…" not in line:
                    assert masked(self.sub(line)) in got, (cmd, line, proc.stdout)
        return proc

    def run_in_process(self, cmd: str) -> subprocess.CompletedProcess:
        """``interp-ray …`` as the console script runs it (``jobs.cli.main``, which puts the current directory on
        sys.path), in this process: each command spares a Python start and torch's import. What it imported from the
        folder (``my_models``) and the path entry are taken back afterwards."""
        import contextlib
        import io
        import shlex

        from jobs.cli import main

        out, err = io.StringIO(), io.StringIO()
        path, modules, cwd = list(sys.path), set(sys.modules), os.getcwd()
        os.chdir(self.folder)
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                code = main(shlex.split(cmd)[1:])
        finally:
            os.chdir(cwd)
            sys.path[:] = path
            for name in set(sys.modules) - modules:
                if name == "my_models" or name.startswith("my_models."):
                    del sys.modules[name]
        return subprocess.CompletedProcess(cmd, code, out.getvalue(), err.getvalue())

    def start_serve(self, cmd: str) -> None:
        self.serve_log = open(self.folder / "serve.log", "w")
        self.serve = subprocess.Popen(["bash", "-c", f"exec {cmd}"], cwd=self.folder, env=self.env,
                                      stdout=self.serve_log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + SERVE_TIMEOUT_S
        url = f"http://127.0.0.1:{self.port}/v1/health"
        while True:
            assert self.serve.poll() is None, (self.folder / "serve.log").read_text()[-4000:]
            try:
                with urllib.request.urlopen(url, timeout=10) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            assert time.monotonic() < deadline, (self.folder / "serve.log").read_text()[-4000:]
            time.sleep(2)

    def stop_serve(self) -> None:
        if self.serve is None:
            return
        if self.serve.poll() is None:
            os.killpg(self.serve.pid, signal.SIGTERM)  # a backgrounded `serve run` ignores SIGINT
        try:
            self.serve.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(self.serve.pid, signal.SIGKILL)
            self.serve.wait(timeout=30)
        self.serve_log.close()


def walk_page(folder: Path, replace: dict[str, str], *, until: str | None = None, address: str | None = None,
              check_output: bool = True, sections: tuple[str, ...] | None = None, in_process: bool = False) -> Walk:
    """Run the page's steps in ``folder``: all of them, or those before the section starting with ``until``, or
    (``sections``) the files of every section and the commands of those sections only."""
    make_images(folder)
    walk = Walk(folder, {"$REPO": str(REPO), DOC_DIR: str(folder), **replace}, address=address,
                check_output=check_output, in_process=in_process)
    try:
        for step in doc_steps(DOC.read_text()):
            if until and step.section.startswith(until):
                break
            if sections is not None and step.kind == "run" and not step.section.startswith(sections):
                continue
            walk.run(step)
    except BaseException:
        walk.stop_serve()
        print("\n".join(walk.log)[-20000:])
        raise
    return walk


def assert_normalised_inside(folder: Path, ckpt: Path, weights: str, build) -> None:
    """The imported checkpoint gives the user's own network's logits on ``(x - mean) / std`` (ImageNet's, as
    train_elsewhere.py normalised), from the weights file as trained: normalisation happens inside the model."""
    from interp_ray.checkpoint import load_classifier

    state = torch.load(folder / weights, weights_only=True)
    net = build(num_classes=3)
    net.load_state_dict({k.removeprefix("module."): v for k, v in state.items()})
    x = torch.rand(4, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        torch.testing.assert_close(load_classifier(ckpt).model(x), net.eval()((x - mean) / std))


def test_the_page_parses_into_its_files_and_commands():
    steps = doc_steps(DOC.read_text())
    files = [s.name for s in steps if s.kind == "file"]
    assert files == ["my_models.py", "train_elsewhere.py", "extract.yaml", "cnn_inte.yaml", "flint.yaml",
                     "explain.yaml", "serve.yaml", "interpnet_shapes.yaml", "semantic_shapes.yaml"]
    commands = [s.text.split()[1] if s.text.startswith("interp-ray") else s.text.split()[0]
                for s in steps if s.kind == "run"]
    for stage in ("layers", "import-model", "extract", "fit-cnn-inte", "train-flint", "explain-dataset", "serve"):
        assert stage in commands, stage
    assert "train-classifier" not in commands and "train-explainer" not in commands   # marked not run, with why
    assert masked("train: 72 rows in 1 shard(s) (key 0eb662adf3e74e1e) 120 rows/s") == \
        "train: # rows in # shard(s) (key #) # rows/s"


def test_the_page_up_to_the_ray_stages_and_every_one_line_refusal(tmp_path, monkeypatch):
    """Without Ray: the user's training, ``layers``, ``import-model`` as the page shows them, then the page's
    mistakes (key names, class count, a misspelt builder, timm missing, code not importable here, a layer the
    model does not have for CNN-INTE / FLINT / Grad-CAM, a dataset whose classes the model lacks), each one line."""
    walk_page(tmp_path, {}, sections=("## The example", "## 1.", "## 2.", "## When it does not fit"),
              in_process=True)
    from interp_ray.checkpoint import load_classifier

    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        import my_models

        model = load_classifier(tmp_path / "ckpt" / "small").model
        assert_normalised_inside(tmp_path, tmp_path / "ckpt" / "small", "model.pt", my_models.build)
    finally:
        sys.modules.pop("my_models", None)
    assert model.roles()["penultimate"] == ["pool"] and model.roles()["last_maps"] == ["features.6", "features"]
    assert not (tmp_path / "acts").exists() and not (tmp_path / "runs").exists()   # refused before any work


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.parametrize("variant", ["module", "torchvision"])
def test_the_whole_page_from_weights_to_a_served_page(ray_local, tmp_path, monkeypatch, variant):
    """Every stage of the page, on the session's Ray, then its page served over HTTP on 127.0.0.1."""
    from ray import serve

    address = ray_local.get_runtime_context().gcs_address
    replace = TORCHVISION if variant == "torchvision" else {}
    walk = walk_page(tmp_path, replace, until="## When it does not fit", address=address,
                     check_output=variant == "module")
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        ckpt = tmp_path / ("ckpt/mobilenet" if replace else "ckpt/small")
        url = f"http://127.0.0.1:{walk.port}"
        with urllib.request.urlopen(f"{url}/v1/health", timeout=30) as r:
            health = json.loads(r.read())
        assert {"gradcam", "gradient", "center", "cnn_inte", "flint"} <= set(health["methods"]), health
        assert (tmp_path / "cam.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert "my model" in (tmp_path / "page.html").read_text()
        req = urllib.request.Request(f"{url}/v1/explain/cnn_inte", method="POST", headers={"Content-Type": "image/png"},
                                     data=(tmp_path / "images/test/fox/000.png").read_bytes())
        with urllib.request.urlopen(req, timeout=120) as r:
            answer = json.loads(r.read())
        e = answer["explanations"][0]
        assert e["path"] and e["label_name"] in CLASSES
        # The checkpoint normalises inside the model, as the user's training did outside it.
        from interp_ray.checkpoint import load_classifier

        loaded = load_classifier(ckpt)
        assert loaded.config["model"]["options"]["mean"] == IMAGENET_MEAN
        if replace:
            import torchvision

            assert_normalised_inside(tmp_path, ckpt, "mobilenet.pt", torchvision.models.mobilenet_v3_small)
        else:
            import my_models

            assert_normalised_inside(tmp_path, ckpt, "model.pt", my_models.build)
        report = json.loads((tmp_path / "out" / "cnn_inte" / "report.json").read_text())
        assert report["layer"] == loaded.model.roles()["penultimate"][0]
        if not replace:
            # the small net learns the coloured squares in 4 epochs, so the extracted predictions (the store ran the
            # model with its normalisation) are right; MobileNetV3's BatchNorm statistics need more than 72 images
            assert report["splits"]["test"]["cnn_accuracy"] >= 0.8, report["splits"]
        flint = json.loads((tmp_path / "out" / "flint" / "config.json").read_text())
        assert flint["flint"]["layers"] == loaded.model.roles()["last_maps"], flint["flint"]
    finally:
        sys.modules.pop("my_models", None)
        walk.stop_serve()
        serve.shutdown()
