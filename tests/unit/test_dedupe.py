"""The server's dedupe key: digests measured on the real server (docs/SERVER_BEHAVIOUR.md)."""

from __future__ import annotations

import hashlib
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from taskmanager import dedupe_key, php_json
from taskmanager.dedupe import canonical_params, php_float

# (params as sent, PHP's re-encoding, the server's dedupe key for type "Q.nested")
MEASURED = [
    ({"x": 1.0}, '{"x":1}', "48691cd00a35c97ada559858f77c4edcd570e3f9a8b1e5755507b5d13e2aaaa0"),
    (
        {"x": 1e20},
        '{"x":1.0e+20}',
        "3e79611ac6b6024185a73b8c100382d04691359036b9bd3a05fefe308d633772",
    ),
    (
        {"x": 1.5e-7},
        '{"x":1.5e-7}',
        "66250726dce4d76443d85074c9fce383e9739ee62e8c4f488f3e1ece309819e3",
    ),
    (
        {"x": 12345678901234567890},
        '{"x":1.2345678901234567e+19}',
        "247242c770bbaff5c19b4070b9bcfbc7fd42244b165a9160e998983a7003645a",
    ),
    (
        {"a": {}, "b": [], "u": "ü/é"},
        '{"a":[],"b":[],"u":"ü/é"}',
        "a9e6f9a42971a91cf27bcf1e012e7509df8952add28eabc4fdeb02c607cac506",
    ),
    ({"x": 0.1}, '{"x":0.1}', "7d56f73c9bd957e745ed5202a0085839ec7c59a67c3b67db47d7b7d1d41fab5a"),
    (
        {"x": True, "y": None},
        '{"x":true,"y":null}',
        "a5643338a727e755d6dff5bb13a7651fe2c4fd0a902d7ca11d1cf5c6e10486cc",
    ),
]


@pytest.mark.parametrize(("params", "encoded", "key"), MEASURED)
def test_measured_server_keys(params, encoded, key):
    assert php_json(params) == encoded
    assert dedupe_key("Q.nested", params) == key


@pytest.mark.parametrize(
    ("value", "php"),
    [
        (1.0, "1"),
        (1e15, "1000000000000000"),
        (-0.0, "-0"),
        (1e16, "10000000000000000"),
        (1e17, "1.0e+17"),
        (1e-5, "1.0e-5"),
        (1.5e-7, "1.5e-7"),
        (0.0001, "0.0001"),
        (1.2345678901234568e20, "1.2345678901234568e+20"),
        (-2.5, "-2.5"),
        (123.456, "123.456"),
    ],
)
def test_php_float_rules_from_contract(value: float, php: str):
    assert php_float(value) == php


def test_key_order_matters_on_server_but_client_sorts():
    a, b = {"a": 1, "b": 2}, {"b": 2, "a": 1}
    assert dedupe_key("t", a, sort_keys=False) != dedupe_key("t", b, sort_keys=False)
    assert dedupe_key("t", a) == dedupe_key("t", b)


def test_nested_keys_sorted_recursively():
    assert canonical_params({"z": {"b": 1, "a": [{"d": 1, "c": 2}]}, "y": 0}) == {
        "y": 0,
        "z": {"a": [{"c": 2, "d": 1}], "b": 1},
    }


def test_numeric_keyed_object_reencoded_as_list_like_php():
    assert php_json({"0": "a", "1": "b"}) == '["a","b"]'
    assert php_json({"1": "a", "0": "b"}) == '{"1":"a","0":"b"}'


def test_line_terminators_escaped_like_php():
    assert php_json({"s": "a\u2028b"}) == '{"s":"a\\u2028b"}'


def test_nan_refused():
    with pytest.raises(ValueError):
        php_json({"x": float("nan")})


json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.text(
        alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\u2028\u2029")
    ),
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            st.text(alphabet="abcxyz", min_size=1, max_size=3), children, min_size=1, max_size=4
        )
    ),
    max_leaves=12,
)


@given(
    st.dictionaries(
        st.text(alphabet="abcdef", min_size=1, max_size=4), json_values, min_size=1, max_size=5
    )
)
def test_python_json_agrees_where_contract_says_it_does(params):
    """Strings, 64-bit ints, bools, null, lists and non-empty objects (no digit keys, no floats):
    PHP's re-encoding equals Python's compact JSON, so the key is the plain sha256 of it."""
    expected = json.dumps(params, ensure_ascii=False, separators=(",", ":"))
    assert php_json(params) == expected
    digest = hashlib.sha256(("t\0" + expected).encode()).hexdigest()
    assert dedupe_key("t", params, sort_keys=False) == digest
