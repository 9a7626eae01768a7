"""Encoder spec parsing: kinds, options, the canonical form, and the errors for bad specs."""

from __future__ import annotations

import pytest

from hn_trainer.embeddings import parse_spec
from hn_trainer.errors import EncoderError


def test_parse_spec_kinds_options_and_canonical_form():
    spec = parse_spec("st:sentence-transformers/all-MiniLM-L6-v2?max_seq_length=128")
    assert (spec.kind, spec.target, spec.options) == (
        "st",
        "sentence-transformers/all-MiniLM-L6-v2",
        {"max_seq_length": 128},
    )
    bare = parse_spec("sentence-transformers/all-MiniLM-L6-v2")
    assert bare.kind is None and bare.canonical == "st:sentence-transformers/all-MiniLM-L6-v2"
    assert parse_spec("lsa").canonical == "lsa" and parse_spec("lsa").target == ""
    assert parse_spec("LSA:256?seed=3").options == {"seed": 3}
    onnx = parse_spec("onnx:/m/model.onnx?tokenizer=/m/tokenizer.json&max_length=64")
    assert onnx.kind == "onnx" and onnx.options == {"tokenizer": "/m/tokenizer.json", "max_length": 64}
    # option order does not change the canonical form
    assert parse_spec("lsa:8?seed=1&min_df=2").canonical == parse_spec("lsa:8?min_df=2&seed=1").canonical


@pytest.mark.parametrize(
    "spec, fragment",
    [
        ("", "empty"),
        ("bogus:thing", "unknown kind"),
        ("st:model?colour=blue", "unknown option"),
        ("st:model?max_seq_length=long", "not a valid int"),
        ("lsa:many", "number of dimensions"),
        ("st:", "names no model"),
    ],
)
def test_parse_spec_rejects_bad_specs_naming_them(spec, fragment):
    with pytest.raises(EncoderError) as info:
        parse_spec(spec)
    assert fragment in str(info.value)
    if spec:
        assert repr(spec) in str(info.value)
