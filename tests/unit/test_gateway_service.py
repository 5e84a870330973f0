"""The gateway's proto -> domain translation: defaults filled in once, at the edge."""

from __future__ import annotations

from tollway.common.caching import CacheMode, CachePolicy
from tollway.common.chat import ChatMessage
from tollway.common.v1 import common_pb2
from tollway.gateway.auth import Tenant
from tollway.gateway.service import request_from_proto
from tollway.gateway.v1 import gateway_pb2

TENANT = Tenant("acme", "k1")


def test_an_unset_request_gets_the_defaults() -> None:
    proto = gateway_pb2.GenerateRequest(model="m", messages=[common_pb2.Message(role="user", content="hi")])
    req = request_from_proto(proto, TENANT, default_max_tokens=256)
    chat = req.chat
    assert chat.messages == (ChatMessage("user", "hi"),) and chat.max_tokens == 256 and chat.tenant == "acme"
    assert (chat.temperature, chat.top_p, chat.seed) == (None, None, None)
    assert len(chat.request_id) == 32 and req.cache == CachePolicy("default", CacheMode.NORMAL)


def test_every_set_field_reaches_the_domain() -> None:
    proto = gateway_pb2.CompleteRequest(
        model="m",
        messages=[common_pb2.Message(role="user", content="hi", name="u")],
        max_tokens=10,
        temperature=0.0,
        top_p=0.5,
        stop=["\n"],
        seed=0,
        cache_policy=common_pb2.CachePolicy(namespace="ns", mode=common_pb2.CACHE_MODE_BYPASS),
        user="u1",
        feature="f",
        request_id="r-1",
    )
    req = request_from_proto(proto, TENANT, default_max_tokens=256)
    chat = req.chat
    assert (chat.max_tokens, chat.temperature, chat.top_p, chat.stop, chat.seed) == (10, 0.0, 0.5, ("\n",), 0)
    assert chat.messages[0].name == "u" and chat.request_id == "r-1"
    assert (req.user, req.feature, req.cache) == ("u1", "f", CachePolicy("ns", CacheMode.BYPASS))


def test_priority_defaults_to_the_keys_and_conversation_reaches_the_domain() -> None:
    proto = gateway_pb2.GenerateRequest(
        model="m", messages=[common_pb2.Message(role="user", content="hi")], conversation_id="c-9"
    )
    req = request_from_proto(proto, Tenant("acme", "k1", priority="batch"), default_max_tokens=256)
    assert (req.api_key_id, req.priority, req.conversation_id) == ("k1", "batch", "c-9")
    proto.priority = gateway_pb2.PRIORITY_INTERACTIVE
    assert request_from_proto(proto, TENANT, default_max_tokens=256).priority == "interactive"
    assert request_from_proto(proto, TENANT, default_max_tokens=256).chat.max_tokens == 256
