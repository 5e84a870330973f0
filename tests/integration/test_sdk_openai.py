"""The OpenAI surface as the official `openai` SDK sees it through Envoy (issue 16): embeddings,
models, the rest of chat completions, and the SDK's error classes."""

from __future__ import annotations

import asyncio
import base64

import httpx
import numpy as np
import openai
import pytest

from tollway.embedding.v1 import embedding_pb2, embedding_pb2_grpc
from tollway.launcher.stack import Stack
from tollway.mesh import clients

pytestmark = pytest.mark.timeout(90)
NO_CACHE = {"x-tollway-cache-mode": "bypass"}
EMBED_MODEL = "minilm-l6-v2-int8"


@pytest.fixture
def sdk(stack: Stack, api_key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=stack.edge_url + "/v1", api_key=api_key, max_retries=0)


def _service_vectors(stack: Stack, texts: list[str]) -> np.ndarray:
    async def call() -> list[list[float]]:
        async with clients.channel(stack.address("embedding")) as channel:
            stub = embedding_pb2_grpc.EmbeddingServiceStub(channel)
            reply = await stub.Embed(embedding_pb2.EmbedRequest(texts=texts, model=EMBED_MODEL), timeout=30)
            return [list(e.values) for e in reply.embeddings]

    return np.array(asyncio.run(call()), dtype=np.float32)


def test_embeddings_float_and_base64_match_the_embedding_service(sdk: openai.OpenAI, stack: Stack) -> None:
    texts = ["the cat sat on the mat", "quarterly revenue grew by 4 percent"]
    expected = _service_vectors(stack, texts)
    as_floats = sdk.embeddings.with_raw_response.create(model=EMBED_MODEL, input=texts, encoding_format="float")
    floats = as_floats.parse()
    assert [d.index for d in floats.data] == [0, 1]
    assert np.allclose(np.array([d.embedding for d in floats.data], dtype=np.float32), expected, atol=1e-6)
    assert floats.usage.prompt_tokens == floats.usage.total_tokens > 0
    assert as_floats.headers["x-tollway-model"] == EMBED_MODEL
    # The SDK asks for base64 by default and decodes it itself.
    packed = sdk.embeddings.create(model=EMBED_MODEL, input=texts[0])
    assert np.array_equal(np.array(packed.data[0].embedding, dtype=np.float32), expected[0])
    raw = httpx.post(
        stack.edge_url + "/v1/embeddings",
        json={"model": EMBED_MODEL, "input": texts[1], "encoding_format": "base64"},
        headers={"authorization": f"Bearer {sdk.api_key}"},
    )
    vector = np.frombuffer(base64.b64decode(raw.json()["data"][0]["embedding"]), "<f4")
    assert np.array_equal(vector, expected[1])


def test_embeddings_refusals(sdk: openai.OpenAI, stack: Stack) -> None:
    with pytest.raises(openai.BadRequestError) as dims:
        sdk.embeddings.create(model=EMBED_MODEL, input="x", dimensions=128)
    assert dims.value.code == "dimensions_unsupported" and "384" in dims.value.message
    with pytest.raises(openai.BadRequestError) as tokens:
        sdk.embeddings.create(model=EMBED_MODEL, input=[1, 2, 3])
    assert tokens.value.param == "input"
    with pytest.raises(openai.NotFoundError) as unknown:
        sdk.embeddings.create(model="text-embedding-3-small", input="x")
    assert EMBED_MODEL in unknown.value.message
    anonymous = openai.OpenAI(base_url=stack.edge_url + "/v1", api_key="tw-wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        anonymous.embeddings.create(model=EMBED_MODEL, input="x")


def test_models_retrieve(sdk: openai.OpenAI) -> None:
    model = sdk.models.retrieve("fake-ok")
    assert model.id == "fake-ok" and model.object == "model" and model.owned_by == "fakeai"
    with pytest.raises(openai.NotFoundError) as missing:
        sdk.models.retrieve("no-such-model")
    assert "fake-ok" in missing.value.message
