"""Value formatting and tables (pure functions; no fakes)."""

from __future__ import annotations

from corral.cli.output import format_cell, format_unit, format_value, plain_table, query_table


def test_units_like_ganeti():
    assert format_unit(128) == "128M"
    assert format_unit(1536) == "1.5G"
    assert format_unit(3 * 1024 * 1024) == "3.0T"
    assert format_unit(1536, "m") == "1536"
    assert format_unit(1536, "g") == "1.5"


def test_values_and_cells():
    assert format_value(True, "bool") == "Y"
    assert format_value(["a", "b"], "other") == "a,b"
    assert format_value(None, "text") == "-"
    assert format_cell([3, None], "unit") == "-"
    assert format_cell([4, None], "unit") == "*"
    assert format_cell([1, None], "text") == "??"
    assert format_cell([3, None], "unit", verbose=True) == "(unavail)"


def test_plain_table_alignment_and_separator():
    headers, rows = ["Instance", "Memory"], [["vm1", "128M"], ["longname", "1.0G"]]
    assert plain_table(headers, rows, numeric=[False, True]) == (
        "Instance Memory\nvm1        128M\nlongname   1.0G\n"
    )
    assert plain_table(headers, rows, no_headers=True, separator=":") == (
        "vm1:128M\nlongname:1.0G\n"
    )


def test_query_table_units_follow_separator():
    result = {
        "fields": [
            {"name": "name", "title": "Instance", "kind": "text", "doc": ""},
            {"name": "oper_ram", "title": "Memory", "kind": "unit", "doc": ""},
        ],
        "data": [[[0, "vm1"], [0, 2048]], [[0, "vm2"], [3, None]]],
    }
    assert query_table(result) == (["Instance", "Memory"], [["vm1", "2.0G"], ["vm2", "-"]])
    assert query_table(result, units="m")[1][0] == ["vm1", "2048"]
