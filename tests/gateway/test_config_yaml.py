"""Config files are read with `load_yaml`: the values `yaml.safe_load` gives, built faster."""

from __future__ import annotations

import datetime
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.config_yaml import load_yaml


def _safe_load(text: str) -> Any:
    return yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))


scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=False),
    st.text(max_size=12),
    st.sampled_from(["yes", "no", "on", "off", "~", "null", "0x1F", "1_000", ".inf", "2026-11-30"]),
)
documents = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=30,
)


@settings(max_examples=60, deadline=None)
@given(document=documents, flow=st.sampled_from([False, True, None]))
def test_any_dumped_document_reads_back_as_safe_load_reads_it(document: Any, flow: Any) -> None:
    text = yaml.safe_dump(document, default_flow_style=flow)
    assert load_yaml(text) == _safe_load(text)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "# only a comment\n",
        "routes:\n  a: {stable: x@v1, warm: yes}\n  b:\n    weight: 12.5\n    steps: [1, 5, 50]\n",
        "plain: yes\nquoted: 'yes'\nnull_value: ~\nhex: 0x1F\nwhen: 2026-11-30 10:00:00\n",
        "bytes: !!binary aGVsbG8=\nset: !!set {a, b}\n",
        "base: &base {max_tokens: 10, warm: true}\nroutes:\n  a: *base\n  b: *base\n",
        "base: &base {max_tokens: 10}\nroute:\n  <<: *base\n  warm: true\n",
        "listed: &l [1, 2]\nagain: *l\n",
        "omap: !!omap [{a: 1}, {b: 2}]\n",
        "duplicate: 1\nduplicate: 2\n",
        "1: one\n2.5: two and a half\ntrue: truth\n",
    ],
)
def test_special_documents_read_as_safe_load_reads_them(text: str) -> None:
    assert load_yaml(text) == _safe_load(text)


def test_a_recursive_alias_reads_as_safe_load_reads_it() -> None:
    loaded = load_yaml("a: &a [1, *a]\n")
    assert loaded["a"][0] == 1
    assert loaded["a"][1] is loaded["a"]


def test_timestamps_are_datetimes_as_with_safe_load() -> None:
    assert load_yaml("at: 2026-11-30\n") == {"at": datetime.date(2026, 11, 30)}


@pytest.mark.parametrize(
    "text",
    [
        "a: [1, 2\n",
        "a: 1\n---\nb: 2\n",
        "a: !!python/object:os.system ls\n",
        "a: *missing\n",
        "? [1, 2]\n: a sequence as a key\n",
    ],
)
def test_what_safe_load_refuses_is_refused_with_its_error(text: str) -> None:
    with pytest.raises(yaml.YAMLError) as ours:
        load_yaml(text)
    with pytest.raises(yaml.YAMLError) as theirs:
        _safe_load(text)
    assert type(ours.value) is type(theirs.value)
    assert str(ours.value) == str(theirs.value)
