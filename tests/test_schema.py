"""The one config validator: typed sections, unknown keys, non-finite numbers and keys given twice."""

import math

import pytest

from edgead.errors import EdgeADError
from edgead.model.config import load_config
from edgead.runtime.config import load_run_config
from edgead.schema import Place, build, safe_load
from edgead.signals.config import load_outputs


def test_a_key_given_twice_is_an_error_naming_it_and_both_lines(tmp_path):
    run = tmp_path / "run.yaml"
    run.write_text("engine: e\ndeadline_ms: 100\ncalibration: c\ndeadline_ms: 5000\n")
    with pytest.raises(EdgeADError) as e:
        load_run_config(run)
    assert "'deadline_ms' is given twice (lines 2 and 4)" in e.value.message and str(run) in e.value.message
    model = tmp_path / "model.yaml"
    model.write_text("train:\n  epochs: 3\n  epochs: 30\n")
    with pytest.raises(EdgeADError, match="'epochs' is given twice"):
        load_config("edge", model)
    with pytest.raises(EdgeADError, match="'pin' is given twice"):
        run.write_text("outputs:\n  - {type: gpio, pin: 3, pin: 4}\n")
        load_outputs(run)


def test_safe_load_keeps_yaml_safe():
    with pytest.raises(EdgeADError, match="not valid YAML"):
        safe_load("!!python/object/apply:os.system ['true']\n", "x")
    assert safe_load("a: [1, 2]\nb: {c: null}\n", "x") == {"a": [1, 2], "b": {"c": None}}


def test_non_finite_numbers_are_refused_where_a_number_is_meant(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("train: {lr: .nan}\n")
    with pytest.raises(EdgeADError, match="'train.lr' has a bad value nan"):
        load_config("edge", f)
    from dataclasses import dataclass

    @dataclass
    class Spec:
        gain: float = 1.0

    with pytest.raises(EdgeADError, match="'gain' has a bad value inf"):
        build(Spec, {"gain": math.inf}, Place("x"))
    assert build(Spec, {"gain": 3}, Place("x")).gain == 3.0 and isinstance(build(Spec, {"gain": 3}, Place("x")).gain, float)
