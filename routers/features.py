"""What a router reads of a query: one fixed-size float32 vector, built the way its artifact says.

A kind is an encoder, optionally joined by `+lexical`:
- `contextual`: all-MiniLM-L6-v2 sentence embeddings on ONNX Runtime (`routers.encoder`); about
  17 ms for an MMLU-Pro question on 2 cores, most of a routed request's overhead.
- `static`: the same model distilled into static token embeddings (model2vec): a table lookup and a
  mean, well under a millisecond, at some loss of meaning (no context).
- `+lexical`: TF-IDF weights of the training texts' most frequent words beside the embedding. Words
  name a subject well ("torque", "tort"), which is what a static embedding blurs.

On the pool's dev split a logistic regression over the 14 domains scored 0.789 on `contextual`,
0.743 on `static` and 0.806 on `static+lexical` (a throwaway script, not committed), so
routers default to `static+lexical`: better and about 30 times faster. The lexicon is fitted on a
router's training texts and saved in its artifact; the encoders are shared.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from routers import encoder

KINDS = ("contextual", "static", "contextual+lexical", "static+lexical")
DEFAULT_KIND = "static+lexical"
# What a family chooses among on dev when no kind is given: no forward pass, so routing stays near a millisecond.
CHEAP_KINDS = (DEFAULT_KIND, "static")
# Artifacts written before feature kinds existed hold contextual embeddings and no lexicon.
LEGACY_KIND = "contextual"
LEXICON_FILE = "lexicon.npz"
LEXICON_SIZE = 10_000  # words; 5,000 scored 0.794 and 20,000 0.804 on the dev domains above
TOKEN = re.compile(r"(?u)\b\w\w+\b")  # scikit-learn's default word pattern, applied to lowercased text


class Lexicon:
    """Sublinear TF-IDF over a fixed vocabulary, l2-normalised: scikit-learn's TfidfVectorizer fits the
    vocabulary and the idf weights; the transform is this numpy one, which computes the same vectors
    (a test checks) in about a tenth of the time for one query (scikit-learn spends ~0.25 ms on input
    checks and sparse matrices, a fifth of a routed request's whole overhead)."""

    def __init__(self, terms: Sequence[str], idf: np.ndarray) -> None:
        self.terms = list(terms)
        self.column = {term: i for i, term in enumerate(self.terms)}
        self.idf = idf.astype(np.float32)

    @classmethod
    def fit(cls, texts: Sequence[str]) -> Lexicon:
        from sklearn.feature_extraction.text import TfidfVectorizer

        vectorizer = TfidfVectorizer(sublinear_tf=True, max_features=LEXICON_SIZE, token_pattern=TOKEN.pattern)
        vectorizer.fit(texts)
        return cls(vectorizer.get_feature_names_out().tolist(), vectorizer.idf_)

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        out = np.zeros((len(texts), len(self.terms)), dtype=np.float32)
        for row, text in enumerate(texts):
            counts = Counter(word for word in TOKEN.findall(text.lower()) if word in self.column)
            if not counts:
                continue
            columns = np.fromiter((self.column[word] for word in counts), dtype=np.int64, count=len(counts))
            weights = (1 + np.log(np.fromiter(counts.values(), dtype=np.float32, count=len(counts)))) * self.idf[columns]
            out[row, columns] = weights / np.linalg.norm(weights)
        return out

    def save(self, path: Path) -> None:
        np.savez(path, terms=np.array(self.terms, dtype=str), idf=self.idf)

    @classmethod
    def load(cls, path: Path) -> Lexicon:
        with np.load(path, allow_pickle=False) as data:
            return cls(data["terms"].tolist(), data["idf"])


@dataclass(frozen=True)
class QueryFeatures:
    kind: str
    lexicon: Lexicon | None = None
    # The exact encoder a loaded artifact was trained with (its manifest's `encoder`): routing reads that one's
    # cache; None (fitting, or an artifact older than the field): the installed weights'.
    identity: str | None = None

    @classmethod
    def fit(cls, kind: str, texts: Sequence[str]) -> QueryFeatures:
        """Features of `kind`, with the lexicon (when it has one) fitted on `texts`."""
        if kind not in KINDS:
            raise ValueError(f"unknown feature kind {kind!r}; known: {KINDS}")
        return cls(kind, Lexicon.fit(texts) if kind.endswith("+lexical") else None)

    @property
    def encoder(self) -> str:
        return self.kind.partition("+")[0]

    @property
    def cheap(self) -> bool:
        """Well under a millisecond per query: no forward pass."""
        return self.encoder == "static"

    def _embed(self, texts: Sequence[str], *, cached: bool) -> np.ndarray:
        if self.encoder == "static":
            return encoder.embed_static(texts, self.identity)
        return encoder.cached_embeddings(texts) if cached else encoder.embed(texts, identity=self.identity)

    def _features(self, texts: Sequence[str], *, cached: bool) -> np.ndarray:
        return self.with_embeddings(texts, self._embed(texts, cached=cached))

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """The encoder's part of `self(texts)`: what several routers reading one encoder can compute once."""
        return self._embed(list(texts), cached=False)

    def with_embeddings(self, texts: Sequence[str], embeddings: np.ndarray) -> np.ndarray:
        """`self(texts)` from `embeddings`, the texts' `embed` by this encoder."""
        return embeddings if self.lexicon is None else np.hstack([self.lexicon(texts), embeddings])

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        """Shape (len(texts), dim): what a router scores at request time."""
        return self._features(list(texts), cached=False)

    def of_training(self, texts: Sequence[str]) -> np.ndarray:
        """`self(texts)` for a training set: contextual embeddings come from (and go to) the on-disk cache."""
        return self._features(list(texts), cached=True)

    def params(self) -> dict[str, Any]:
        """What the manifest records: the kind and the exact encoder."""
        installed = encoder.static_id if self.encoder == "static" else encoder.encoder_id
        return {"features": self.kind, "encoder": self.identity or installed()}

    def save(self, directory: Path) -> None:
        if self.lexicon is not None:
            self.lexicon.save(directory / LEXICON_FILE)

    @classmethod
    def load(cls, directory: Path, params: dict[str, Any]) -> QueryFeatures:
        kind = params.get("features", LEGACY_KIND)
        lexicon = Lexicon.load(directory / LEXICON_FILE) if kind.endswith("+lexical") else None
        return cls(kind, lexicon, params.get("encoder"))
