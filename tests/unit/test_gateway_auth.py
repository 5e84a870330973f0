from __future__ import annotations

import pytest

from tollway.gateway.auth import KEY_PREFIX, KeyRing, bearer_token, hash_key
from tollway.mesh.errors import InvalidArgument


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


class _Store:
    """GatewayStore's key methods over a dict (hash -> record)."""

    def __init__(self) -> None:
        self.keys: dict[str, dict[str, str]] = {}

    async def put_key(self, key_hash: str, record: dict[str, str]) -> None:
        self.keys[key_hash] = dict(record)

    async def get_key(self, key_hash: str) -> dict[str, str] | None:
        return self.keys.get(key_hash)

    async def delete_key(self, key_hash: str) -> bool:
        return self.keys.pop(key_hash, None) is not None

    async def list_keys_with_hashes(self) -> list[tuple[str, dict[str, str]]]:
        return list(self.keys.items())


def _ring_with(*key_ids: str) -> tuple[KeyRing, _Store]:
    store = _Store()
    for i, key_id in enumerate(key_ids):
        store.keys[hash_key(f"{key_id}-rest-of-key-{i}")] = {"tenant": f"t{i}", "key_id": key_id, "created_time": "0"}
    return KeyRing(store), store  # type: ignore[arg-type]


async def test_revoke_accepts_the_id_keys_list_prints() -> None:
    ring, store = _ring_with("tw-AbC123", "tw-XyZ789")
    assert await ring.revoke("tw-AbC123…") == "tw-AbC123"  # as `keys list` prints it
    assert [r["key_id"] for r in store.keys.values()] == ["tw-XyZ789"]
    assert await ring.revoke("tw-AbC123") is None  # already gone
    assert await ring.revoke("tw-XyZ7") == "tw-XyZ789"  # a unique prefix
    assert not store.keys


async def test_revoke_accepts_the_whole_key() -> None:
    ring = KeyRing(_Store())  # type: ignore[arg-type]
    key, key_id = await ring.create("acme")
    assert await ring.revoke("tw-wrong-but-long-enough-to-be-a-key") is None
    assert await ring.revoke(key) == key_id
    assert await ring.revoke(key) is None


async def test_revoke_refuses_an_ambiguous_or_too_short_id() -> None:
    ring, store = _ring_with("tw-AbCd23", "tw-AbCd99", "tw-QQQ000", "tw-QQQ000")
    with pytest.raises(InvalidArgument, match=r"matches 2 keys: tw-AbCd23… \(tenant t0\), tw-AbCd99…"):
        await ring.revoke("tw-AbCd")
    with pytest.raises(InvalidArgument, match="whole key when two keys share an id"):
        await ring.revoke("tw-QQQ000")  # two keys with one id: only the whole key tells them apart
    for short in ("tw-", "tw-Ab", "AbC123", ""):
        with pytest.raises(InvalidArgument, match="not a key id"):
            await ring.revoke(short)
    assert len(store.keys) == 4  # nothing was revoked
