"""Choosing and checking the methods that fill explanation stores (the job-level tests, with the store, are in
tests/test_saliency_store.py and tests/jobs/test_explain_dataset.py)."""

import re

import pytest

from interp_ray.errors import UserError
from interp_ray.explain_rows import check_method, output_column, saliency_method_names, target_column

GFI_FAST = {"stage1_iterations": 1, "stage2_iterations": 1}


def test_method_list_is_the_saliency_producers():
    names = saliency_method_names()
    assert {"gradcam", "gradient", "occlusion", "center", "feature_inversion"} <= set(names)
    assert "interpnet" not in names and "flint" not in names
    assert check_method("feature_inversion", {}, GFI_FAST).params["stage2_iterations"] == 1


def test_the_column_a_method_fills_follows_what_it_produces():
    assert output_column("gradcam") == "saliency"
    assert output_column("cnn_inte") == "explanation" and output_column("interpnet") == "explanation"


@pytest.mark.parametrize("name, kwargs, needle", [
    ("nope", {}, "unknown method 'nope'"),
    ("cnn_inte", {}, "give its checkpoint"),
    ("gradcam", {"checkpoint": "/some/ckpt"}, "takes no checkpoint"),
    ("gradcam", {"params": {"target": 3}}, "job's `target` rule"),
])
def test_a_bad_method_choice_is_one_user_error(name, kwargs, needle):
    with pytest.raises(UserError, match=re.escape(needle)):
        check_method(name, kwargs.get("options"), kwargs.get("params"), kwargs.get("checkpoint"))


def test_target_rules_give_one_class_per_row():
    labels = [3, 1, 4]
    assert target_column("label", labels).tolist() == [3, 1, 4]
    assert target_column("predicted", labels).tolist() == [-1, -1, -1]
    assert target_column(2, labels).tolist() == [2, 2, 2]
