"""interp_ray.jsonsafe's writer: the stage, seed and step files of both jobs are written through it, and their resume
logic trusts that a file present is a whole file."""

from __future__ import annotations

import json

import pytest

from interp_ray.jsonsafe import write_json_atomic


def test_a_write_that_fails_leaves_the_old_file_whole_and_no_temporary_beside_it(tmp_path):
    path = tmp_path / "stages" / "s.json"
    write_json_atomic(path, {"a": 1}, indent=2)
    with pytest.raises(TypeError):
        write_json_atomic(path, {"a": object()})   # not JSON: refused before anything is written
    assert json.loads(path.read_text()) == {"a": 1}
    assert sorted(p.name for p in path.parent.iterdir()) == ["s.json"]


def test_default_turns_what_json_cannot_write_into_text_and_the_new_file_replaces_the_old(tmp_path):
    path = tmp_path / "s.json"
    write_json_atomic(path, {"a": 1})
    write_json_atomic(path, {"p": tmp_path}, default=str)
    assert json.loads(path.read_text()) == {"p": str(tmp_path)}
