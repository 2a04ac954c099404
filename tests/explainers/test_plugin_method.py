"""Adding a method is one class: a method defined and registered here, in the test module, and nowhere else, is
explained in-process, through the CLI and through the HTTP API, and holds to the conformance suite's clauses —
with no edit to any other file (no module list, no table of methods, no constructor convention to teach)."""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import pytest
from pydantic import BaseModel, ConfigDict, Field
from test_conformance import (Built, check_bad_input, check_batch_invariance, check_cli, check_determinism,
                              check_http, workshop)

from interp_ray.explainers import Explainer, Explanation
from interp_ray.explainers.base import EXPLAINERS

assert workshop  # the conformance suite's fixture, used here by name


class StrongestUnitsParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    top: int = Field(3, ge=1, le=64, description="how many units to report")


class StrongestUnits(Explainer):
    """The classifier's most active units of its penultimate layer, for its prediction (a plug-in's method)."""

    name: ClassVar[str] = "plugin_strongest_units"
    needs = frozenset({"activations"})
    produces = frozenset({"attributes"})
    Params = StrongestUnitsParams

    def __init__(self, model, *, class_names=None):
        self.model, self.class_names = model, class_names

    def layers(self) -> list[str]:
        return ["relu3"]

    def explain(self, batch, params=None):
        p = self.parse_params(params)
        acts = np.asarray(batch["relu3"])
        out = []
        for a, c in zip(acts, np.asarray(batch["prediction"])):
            top = np.argsort(-a, kind="stable")[:p.top]
            out.append(Explanation(label=int(c), method=self.name,
                                   attributes={f"unit_{j}": round(float(a[j]), 6) for j in top}))
        return out


@pytest.fixture(scope="module")
def plugin(workshop):
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(EXPLAINERS._items, StrongestUnits.name, StrongestUnits)
        yield Built(StrongestUnits.name, workshop)


def test_the_plugin_is_in_the_registry_and_explains_what_it_says(plugin):
    import torch

    from interp_ray.explainers import explainer_names

    assert StrongestUnits.name in explainer_names()
    got = plugin.session.explain(plugin.images, params={"top": 2})
    with torch.no_grad():
        acts = plugin.classifier.model.activations(torch.from_numpy(plugin.images), ["relu3"], with_logits=True)
    for e, a, logits in zip(got, acts["relu3"].numpy(), acts["logits"]):
        assert e.label == int(logits.argmax())
        assert list(e.attributes) == [f"unit_{j}" for j in np.argsort(-a, kind="stable")[:2]]


def test_the_plugin_holds_to_the_conformance_clauses(plugin, tmp_path, capsys):
    check_batch_invariance(plugin)
    check_determinism(plugin)
    check_bad_input(plugin)
    check_cli(plugin, tmp_path, capsys)
    check_http(plugin)
