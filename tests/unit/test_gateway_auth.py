from __future__ import annotations

from tollway.gateway.auth import KEY_PREFIX, bearer_token, hash_key


def test_bearer_token_is_read_from_metadata() -> None:
    assert bearer_token([("authorization", "Bearer abc")]) == "abc"
    assert bearer_token([("x", "y"), ("authorization", b"bearer  abc ")]) == "abc"


def test_other_schemes_and_empty_tokens_are_not_keys() -> None:
    assert bearer_token([("authorization", "Basic abc")]) is None
    assert bearer_token([("authorization", "Bearer ")]) is None
    assert bearer_token([]) is None


def test_keys_are_stored_as_a_hash_only() -> None:
    key = KEY_PREFIX + "secret"
    digest = hash_key(key)
    assert len(digest) == 64 and "secret" not in digest
    assert hash_key(key) == digest != hash_key(key + "x")
