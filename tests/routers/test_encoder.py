"""The ONNX Runtime encoder computes what sentence-transformers computes, for texts long and short."""

from __future__ import annotations

import numpy as np

from routers import encoder

TEXTS = [
    "What is the integral of x^2 from 0 to 3?",
    "Hi",
    "",
    "Which ancient empire built the Great Wall of China, and during which dynasty was most of it built? " * 8,
]


def test_onnx_embeddings_equal_sentence_transformers_including_truncation_and_padding() -> None:
    from sentence_transformers import SentenceTransformer

    reference = SentenceTransformer(str(encoder._model_path()), device="cpu")
    reference.max_seq_length = encoder.MAX_SEQ_LENGTH
    expected = reference.encode(TEXTS, normalize_embeddings=True)
    # Batched with padding (the long text is truncated) and one at a time must both match.
    together = encoder.embed(TEXTS)
    alone = np.vstack([encoder.embed([text]) for text in TEXTS])
    for got in (together, alone):
        assert got.shape == (len(TEXTS), 384)
        assert np.min(np.sum(got * expected, axis=1)) > 0.9999
    assert np.allclose(np.linalg.norm(together, axis=1), 1.0, atol=1e-4)


def test_static_embeddings_equal_model2vec_encode_including_truncation() -> None:
    texts = [*TEXTS, "integral " * 2000, "\u2603 \u00e9t\u00e9 \U0001f600"]  # past the model's 512 tokens; rare pieces
    expected = encoder.load_static_encoder().encode(texts, use_multiprocessing=False)
    got = encoder.embed_static(texts)
    assert got.shape == (len(texts), 384) and got.dtype == np.float32
    np.testing.assert_allclose(got, expected, atol=1e-6)
