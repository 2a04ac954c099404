"""The extraction benchmarks' shared helpers: the scratch folder they work in and how they print their figures."""

import pytest

from benchmarks.extract import print_figures, scratch_dir


def test_a_temporary_scratch_dir_goes_even_when_the_run_fails(tmp_path):
    with pytest.raises(RuntimeError), scratch_dir(None, "interp-ray-test-scratch-") as work:
        (work / "part").write_text("x")
        seen = work
        raise RuntimeError("the benchmark failed")
    assert seen.name.startswith("interp-ray-test-scratch-") and not seen.exists()


def test_a_named_scratch_dir_is_made_and_kept_unless_told(tmp_path):
    with scratch_dir(str(tmp_path / "named" / "work"), "unused-") as work:
        (work / "part").write_text("x")
    assert (tmp_path / "named" / "work" / "part").is_file()
    with scratch_dir(str(tmp_path / "gone"), "unused-", keep=False) as work:  # extract.py without --keep
        (work / "part").write_text("x")
    assert not (tmp_path / "gone").exists()


def test_figures_print_ratios_to_three_places_and_other_floats_to_the_digits_asked(capsys):
    print_figures({"ratio_total": 0.12345, "rows": 50, "store_mib": 1.25, "note": "x"}, digits=1)
    assert capsys.readouterr().out.splitlines() == ["ratio_total: 0.123", "rows: 50", "store_mib: 1.2", "note: x"]
