"""The final `####` number is what exact match compares."""

from __future__ import annotations

from svdlora_cli.analysis.generation import final_number


def test_final_number_normalises():
    assert final_number("so 3 + 4 = 7\n#### 7") == "7"
    assert final_number("#### 1,250") == "1250"
    assert final_number("####  -12.50 dollars") == "-12.5"
    assert final_number("#### $40") == "40"
    assert final_number("#### 3.0") == "3"
    assert final_number("the answer is 7") is None
