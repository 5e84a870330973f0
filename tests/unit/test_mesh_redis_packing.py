"""Commands packed by hiredis (tollway.mesh.redis.PackedConnection) are byte for byte what
redis-py's own asyncio packer sends, and what it refuses is still refused."""

from __future__ import annotations

import pytest
import redis.asyncio as aioredis
from hypothesis import given
from hypothesis import strategies as st
from redis.exceptions import DataError

from tollway.mesh.redis import PackedConnection, connect

ARGS = st.lists(
    st.one_of(
        st.text(max_size=30),
        st.binary(max_size=30),
        st.integers(min_value=-(2**63), max_value=2**63),
        st.floats(allow_nan=False, allow_infinity=False),
    ),
    max_size=40,
)


def _python_packed(*args: object) -> bytes:
    return b"".join(aioredis.Connection().pack_command(*args))


def _packed(*args: object) -> bytes:
    return b"".join(PackedConnection().pack_command(*args))


@given(st.sampled_from(["XADD", "EVALSHA", "CONFIG GET", b"HSET", b"OBJECT ENCODING"]), ARGS)
def test_a_command_packs_as_redis_py_packs_it(name: str | bytes, args: list[object]) -> None:
    assert _packed(name, *args) == _python_packed(name, *args)


def test_a_large_argument_and_views_pack_as_redis_py_packs_them() -> None:
    big = b"x" * 100_000
    assert _packed("SET", "k", big) == _python_packed("SET", "k", big)
    assert _packed("SET", bytearray(b"k"), memoryview(b"v")) == _python_packed("SET", b"k", b"v")


@pytest.mark.parametrize("bad", [True, None, object(), [1]])
def test_what_redis_py_refuses_is_refused_with_its_error(bad: object) -> None:
    with pytest.raises(DataError, match="Convert to a bytes, string, int or float"):
        _packed("SET", "k", bad)


def test_connect_uses_it_for_plain_tcp_only() -> None:
    assert connect("redis://127.0.0.1:1/0").connection_pool.connection_class is PackedConnection
    assert connect("rediss://127.0.0.1:1/0").connection_pool.connection_class is not PackedConnection
