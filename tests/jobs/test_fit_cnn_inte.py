"""The CNN-INTE job: activations from the store, the meta-model, its report and pictures (local engine, no Ray)."""

import json

import numpy as np

from interp_ray.explainers.cnn_inte import CnnInte
from interp_ray.store import ActivationStore
from jobs.common import run_main
from jobs.fit_cnn_inte import main


def _args(ckpt, tmp_path, *extra):
    return ["--config", "configs/cnn_inte_digits.yaml", "--set", f"checkpoint={ckpt}",
            "--set", f"store.root={tmp_path / 'store'}", "--set", f"output={tmp_path / 'out'}",
            "--set", "compute.engine=local", "--set", "cnn_inte.n_estimators=10", "--set", "cnn_inte.k1=4",
            "--set", "cnn_inte.k2=3", *extra]


def test_fits_from_the_store_and_reports_what_the_saved_model_predicts(digits_checkpoint, tmp_path, capsys):
    assert run_main(main, _args(digits_checkpoint, tmp_path)) == 0
    out = tmp_path / "out"
    report = json.loads((out / "report.json").read_text())
    model = CnnInte.load(str(out))
    # The saved model reproduces the reported fidelity on the stored test activations.
    rows = ActivationStore.open(report["stores"]["test"]).read()
    fidelity = float(np.mean(model.predict(rows) == rows["prediction"]))
    assert report["splits"]["test"]["fidelity"] == fidelity
    assert report["fit_rows"] == 1257 and model.width == rows["relu3"].reshape(len(rows["relu3"]), -1).shape[1]
    # Representative images came from the dataset through the row index: every cluster has pictures.
    assert all(model.representative_images(i) is not None for i in range(4))
    for name in ("global.png", "route_0.png", "route_2.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # Each diagram's route is the saved meta-model's own decision for its row (the first test rows, in order).
    first = {k: v[:3] for k, v in rows.items()}
    assert [r["prediction"] for r in report["routes"]] == model.predict(first).tolist()
    assert all(r["label"] == r["votes_argmax"] == r["prediction"] for r in report["routes"])
    assert "fidelity" in capsys.readouterr().out


def test_bad_layer_exits_2_with_one_line(digits_checkpoint, tmp_path, capsys):
    assert run_main(main, _args(digits_checkpoint, tmp_path, "--set", "cnn_inte.layer=nope")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nope" in err[0]
    assert not (tmp_path / "out").exists()


def test_reuses_a_store_that_holds_its_layer_among_others(digits_checkpoint, tmp_path):
    """A store `interp-ray extract` wrote with more layers than relu3 (its key hashes the layer list, so not the
    job's own key) is read as it is: no second extraction, no part rewritten."""
    from jobs.extract_activations import main as extract_main

    root = tmp_path / "store"
    assert run_main(extract_main, ["--set", f"checkpoint={digits_checkpoint}", "--set", "data.name=digits",
                                   "--set", "splits=[train, test]", "--set", "layers=[relu2, relu3]",
                                   "--set", f"store.root={root}", "--set", "compute.engine=local"]) == 0
    before = {p: p.stat().st_mtime_ns for p in root.rglob("*.parquet")}
    (model_dir,) = root.iterdir()
    stores = sorted(p.name for p in model_dir.iterdir())
    assert len(stores) == 2
    assert run_main(main, _args(digits_checkpoint, tmp_path)) == 0
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert sorted(p.name for p in model_dir.iterdir()) == stores                 # nothing extracted
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*.parquet")} == before  # nothing rewritten
    assert set(report["stores"]) == {"train", "test"}
    assert {loc.rsplit("/", 1)[-1] for loc in report["stores"].values()} == set(stores)
    assert report["fit_rows"] == 1257
    # A store of other rows (another split seed) is not the job's: it extracts its own.
    assert run_main(main, _args(digits_checkpoint, tmp_path, "--set", "data.options={seed: 7}")) == 0
    assert len(list(model_dir.iterdir())) == 4
