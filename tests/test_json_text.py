"""Result files: indented JSON, lists of plain values on one line, non-finite floats as null."""

import json
import math

from iwae_tutorial.checkpoints import json_text


def test_lists_of_values_stay_on_one_line_and_round_trip():
    obj = {"a": [1.5, 2, -3e-9], "b": {"c": [], "d": [{"e": [1, 2]}, "x"]}, "f": "text"}
    text = json_text(obj)
    assert json.loads(text) == obj
    assert '"a": [1.5, 2, -3e-09]' in text and '"e": [1, 2]' in text
    assert text.endswith("}\n") and text.count("\n") > 5  # still indented


def test_non_finite_values_become_null():
    assert json.loads(json_text({"x": [math.nan, 1.0], "y": math.inf})) == {"x": [None, 1.0],
                                                                             "y": None}
