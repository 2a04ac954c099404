"""interp_ray.metrics.scene_attributes: learned attribute columns matched to the scenes dataset's ground truth."""

from __future__ import annotations

import numpy as np

from interp_ray.metrics.scene_attributes import ground_truth_indicators, match_attributes, scenes_attribute_table


def test_attribute_matching_finds_the_tracked_ground_truth():
    rng = np.random.default_rng(0)
    attrs = np.stack([rng.integers(0, 4, 500), rng.integers(0, 4, 500), rng.integers(0, 3, 500),
                      rng.integers(0, 2, 500)], 1)
    ind, names = ground_truth_indicators(attrs)
    assert len(names) == 13 and names[4] == "colour=red"
    phi = np.stack([ind[:, names.index("colour=red")] * 2 + 0.3 * rng.random(500),
                    ind[:, names.index("pattern=dotted")] + 0.3 * rng.random(500),
                    np.zeros(500)], 1)
    table = match_attributes(phi, ind, names, ["a", "b", "dead"])
    assert [t["match"] for t in table] == ["colour=red", "pattern=dotted", None]
    assert table[0]["corr"] > 0.9 and table[0]["corr"] > table[0]["second_corr"]
    # the table from the raw arrays (N×J activations, N×4 value indices) is the same matching
    assert scenes_attribute_table(phi, attrs, ["a", "b", "dead"]) == table
