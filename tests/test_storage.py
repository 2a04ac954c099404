"""Object storage through one setting, against a real S3 API (moto's server on 127.0.0.1): checkpoints, activation
stores and the jobs' refusal of a path they could not use, before any work starts."""

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from interp_ray.checkpoint import join_uri, load_classifier, save_classifier
from interp_ray.errors import UserError
from interp_ray.models import build_model
from interp_ray.storage import ENDPOINT_ENV, check_storage, filesystem, join, ray_storage
from interp_ray.store import ActivationStore, find_store
from jobs.common import EXIT_USAGE, run_main
from moto_s3 import list_keys, moto_server

REPO = Path(__file__).resolve().parents[1]


def uri_form(endpoint: str, bucket: str, path: str) -> str:
    return f"s3://{bucket}/{path}?endpoint_override={endpoint.split('://', 1)[1]}&scheme=http"


def test_endpoint_setting_reaches_the_local_server(s3):
    endpoint, bucket = s3
    fs, path = filesystem(f"s3://{bucket}/a/b.txt")
    assert path == f"{bucket}/a/b.txt"
    with fs.open_output_stream(path) as f:
        f.write(b"hello")
    assert list_keys(endpoint, bucket) == [f"{bucket}/a/b.txt"]


def test_a_path_naming_its_own_endpoint_wins_over_the_setting(s3, monkeypatch):
    endpoint, bucket = s3
    monkeypatch.setenv(ENDPOINT_ENV, "http://127.0.0.1:1")  # nothing listens there
    fs, path = filesystem(uri_form(endpoint, bucket, "x"))
    with fs.open_output_stream(path) as f:
        f.write(b"1")
    assert list_keys(endpoint, bucket) == [f"{bucket}/x"]


def test_join_keeps_the_query_last():
    assert join("s3://b/runs/?endpoint_override=h:1&scheme=http", "r1", "init") == \
        "s3://b/runs/r1/init?endpoint_override=h:1&scheme=http"
    assert join("s3://b/runs", "r1") == "s3://b/runs/r1"
    assert join_uri("gs://b/x/", "y") == "gs://b/x/y"


@pytest.mark.parametrize("value", ["ftp://h:1", "http://", "http://h:1/some/path"])
def test_a_malformed_endpoint_setting_is_one_line(value, monkeypatch):
    monkeypatch.setenv(ENDPOINT_ENV, value)
    with pytest.raises(UserError, match=ENDPOINT_ENV):
        filesystem("s3://bucket/x")


def test_ray_storage_hands_ray_train_the_filesystem_for_remote_paths(s3, tmp_path):
    endpoint, bucket = s3
    path, fs = ray_storage(f"s3://{bucket}/runs")
    assert path == f"{bucket}/runs" and fs.type_name == "s3"
    assert ray_storage(str(tmp_path / "runs")) == (str(tmp_path / "runs"), None)


def test_check_storage_accepts_a_usable_bucket_and_leaves_nothing(s3):
    endpoint, bucket = s3
    check_storage(f"s3://{bucket}/out")
    check_storage(uri_form(endpoint, bucket, "out"))
    assert list_keys(endpoint, bucket) == []


def test_check_storage_refuses_a_missing_bucket_in_one_line(s3):
    _, bucket = s3
    with pytest.raises(UserError) as e:
        check_storage(f"s3://{bucket}-missing/out", what="output_dir")
    msg = str(e.value)
    assert "\n" not in msg and "does not exist" in msg and f"{bucket}-missing" in msg and "output_dir" in msg


def test_check_storage_refuses_an_endpoint_that_does_not_answer_within_bounded_time(monkeypatch):
    monkeypatch.setenv(ENDPOINT_ENV, "http://127.0.0.1:1")
    t0 = time.monotonic()
    with pytest.raises(UserError, match="cannot reach bucket 'b1'") as e:
        check_storage("s3://b1/out")
    assert "\n" not in str(e.value) and time.monotonic() - t0 < 60


def test_check_storage_refuses_credentials_the_server_rejects(tmp_path, monkeypatch):
    # moto checks signatures against its IAM users once INITIAL_NO_AUTH_ACTION_COUNT actions have passed: with 0,
    # unknown keys are refused as a real S3 would.
    with moto_server(env={"INITIAL_NO_AUTH_ACTION_COUNT": "0"}) as endpoint:
        monkeypatch.setenv(ENDPOINT_ENV, endpoint)
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "nobody")
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "nothing")
        with pytest.raises(UserError, match="cannot") as e:
            check_storage("s3://some-bucket/out")
        assert "\n" not in str(e.value)


def test_local_paths_are_not_probed(tmp_path):
    check_storage(tmp_path / "not-yet")
    assert not (tmp_path / "not-yet").exists()


@pytest.mark.parametrize("form", ["setting", "uri"])
def test_classifier_checkpoint_round_trip_through_s3(s3, form, monkeypatch):
    endpoint, bucket = s3
    if form == "uri":
        monkeypatch.delenv(ENDPOINT_ENV)
    uri = f"s3://{bucket}/ckpt/digits" if form == "setting" else uri_form(endpoint, bucket, "ckpt/digits")
    torch.manual_seed(0)
    opts = {"num_classes": 10, "in_channels": 1, "image_size": 8}
    model = build_model("digits_cnn", **opts)
    save_classifier(uri, model, model_name="digits_cnn", model_options=opts, class_names=[str(i) for i in range(10)])
    assert list_keys(endpoint, f"{bucket}/ckpt") == [f"{bucket}/ckpt/digits/config.json",
                                                     f"{bucket}/ckpt/digits/weights.safetensors"]
    loaded = load_classifier(uri)
    x = torch.rand(3, 1, 8, 8)
    with torch.inference_mode():
        torch.testing.assert_close(loaded.model(x), model.eval()(x))


def test_missing_checkpoint_on_s3_is_one_line(s3):
    _, bucket = s3
    with pytest.raises(UserError, match="cannot read checkpoint .*nothing-here") as e:
        load_classifier(f"s3://{bucket}/nothing-here")
    assert "\n" not in str(e.value)


def test_activation_store_on_s3_equals_the_local_one(s3, digits_checkpoint, tmp_path):
    from jobs.extract_activations import main

    endpoint, bucket = s3
    args = ["--set", f"checkpoint={digits_checkpoint}", "--set", "splits=[val]", "--set", "layers=[relu3]",
            "--set", "compute.engine=local", "--set", "store.shard_rows=64"]
    assert run_main(main, [*args, "--set", f"store.root=s3://{bucket}/acts"]) == 0
    assert run_main(main, [*args, "--set", f"store.root={tmp_path}"]) == 0
    remote = find_store(f"s3://{bucket}/acts", str(digits_checkpoint), data={"name": "digits"}, split="val",
                        layers=["relu3"])
    local = find_store(str(tmp_path), str(digits_checkpoint), data={"name": "digits"}, split="val",
                       layers=["relu3"])
    assert remote.key == local.key and remote.manifest.num_shards > 1
    got, want = remote.read(), local.read()
    np.testing.assert_array_equal(got["index"], np.arange(len(local)))
    np.testing.assert_array_equal(got["relu3"], want["relu3"])
    assert isinstance(ActivationStore.open(remote.location), ActivationStore)


def _cli(module: str, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, capture_output=True, text=True,
                          timeout=300, env={**os.environ, "PYTHONPATH": str(REPO), **env})


@pytest.mark.parametrize("module, args", [
    ("jobs.train_classifier", ["--config", "configs/digits.yaml", "--set", "run.storage_path=s3://{missing}/runs"]),
    ("jobs.pipeline", ["--config", "configs/pipeline.yaml", "--smoke", "--set", "output_dir=s3://{missing}/p"]),
])
def test_jobs_refuse_a_missing_bucket_before_starting_ray(s3, module, args):
    endpoint, bucket = s3
    env = {ENDPOINT_ENV: endpoint, "RAY_ADDRESS": "127.0.0.1:1"}  # any Ray connection attempt would fail loudly
    proc = _cli(module, *[a.format(missing=f"{bucket}-nope") for a in args], env=env)
    assert proc.returncode == EXIT_USAGE, proc.stderr[-2000:]
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert lines == [lines[-1]] and lines[-1].startswith("error: ") and "does not exist" in lines[-1], proc.stderr
