"""The query filter language (pure: parser, argument handling, evaluation)."""

from __future__ import annotations

import re

import pytest

from corral.cli.parsing import UsageError
from corral.cli.qfilter import (
    evaluate,
    filter_fields,
    glob_regexp,
    make_filter,
    parse_filter,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('name == "db1"', ["=", "name", "db1"]),
        ("name != 'db1'", ["!=", "name", "db1"]),
        ("be/vcpus >= 2", [">=", "be/vcpus", 2]),
        ("oper_ram < 1.5", ["<", "oper_ram", 1.5]),
        ("admin_state", ["?", "admin_state"]),
        ("admin_state == false", ["=", "admin_state", False]),
        ("name =~ m/^web/i", ["=~", "name", "(?i)^web"]),
        ("name =~ /a\\/b/", ["=~", "name", "a/b"]),
        ('name =~ "^db"', ["=~", "name", "^db"]),
        ("name !~ m#x#s", ["!", ["=~", "name", "(?s)x"]]),
        ('name =* "web*"', ["=~", "name", glob_regexp("web*")]),
        ('"prod" in tags', ["=[]", "tags", "prod"]),
        ('"prod" not in tags', ["!", ["=[]", "tags", "prod"]]),
        (
            "a == 1 or b == 2 and not c",
            ["|", ["=", "a", 1], ["&", ["=", "b", 2], ["!", ["?", "c"]]]],
        ),
        ("(a or b) and c", ["&", ["|", ["?", "a"], ["?", "b"]], ["?", "c"]]),
        ('name == "say \\"hi\\""', ["=", "name", 'say "hi"']),
    ],
)
def test_parse(text, expected):
    assert parse_filter(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "query filter is empty"),
        ('name = "x"', "unknown operator '=' (use '==') at position 6"),
        ("name ==", "expected a value at the end"),
        ("name == x", "expected a value (a quoted string, a number, true or false) at position 9"),
        ('(name == "x"', "missing ')'"),
        ("name =~ x", "expected a regular expression"),
        ("name =~ /(/", "invalid regular expression '('"),
        ("name =~ /x", "unterminated regular expression (missing closing /)"),
        ("name =* 3", "=* needs a quoted glob pattern"),
        ("and", "expected a field name, not 'and'"),
        ('"x" tags', "expected a field name or VALUE in FIELD"),
        ("a b", "unexpected text (expected 'and', 'or' or the end) at position 3 ('b')"),
    ],
)
def test_parse_errors_name_the_problem(text, message):
    with pytest.raises(UsageError) as exc:
        parse_filter(text)
    assert message in str(exc.value)


def test_make_filter_like_ganeti():
    assert make_filter(["db1", "db2"], force_filter=False) == (["db1", "db2"], None)
    assert make_filter([], force_filter=False) == ([], None)
    names, qfilter = make_filter(['name == "x"'], force_filter=False)
    assert names == [] and qfilter == ["=", "name", "x"]
    assert make_filter(["db1"], force_filter=True) == ([], ["?", "db1"])
    names, qfilter = make_filter(["web*", "db1"], force_filter=False, namefield="id")
    assert names == [] and qfilter == ["|", ["=~", "id", glob_regexp("web*")], ["=", "id", "db1"]]
    with pytest.raises(UsageError, match="exactly one filter argument"):
        make_filter(["a", "b"], force_filter=True)


def test_glob_matches_whole_names_and_short_host_names():
    rx = re.compile(glob_regexp("web?"))
    assert rx.search("web1") and rx.search("web1.example.com")
    assert not rx.search("xweb1") and not rx.search("web12")


def test_evaluate():
    row = {"name": "db1", "oper_ram": 128, "vcpus": "2", "tags": ["a", "b"], "up": True,
           "ip": None}  # fmt: skip
    yes = [
        'name == "db1"',
        "oper_ram == 128",
        'oper_ram == "128"',
        "vcpus == 2",
        "vcpus >= 2 and oper_ram > 100",
        'name < "db2"',
        "up",
        "up == true",
        '"a" in tags',
        "name =~ /^D/i",
        'tags =~ "b"',
        'ip != "x" or name == "db1"',
        "not ip",
    ]
    no = [
        'name == "DB1"',
        "oper_ram > 128",
        "up == false",
        '"c" in tags',
        'ip == "x"',
        'ip != "x"',  # an unavailable value matches no comparison
        "ip =~ /./",
        'oper_ram < "x"',
    ]
    for text in yes:
        assert evaluate(parse_filter(text), row), text
    for text in no:
        assert not evaluate(parse_filter(text), row), text


def test_filter_fields():
    qfilter = parse_filter('status == "running" and ("x" in tags or not status)')
    assert filter_fields(qfilter) == ["status", "tags"]
    assert filter_fields(None) == []
