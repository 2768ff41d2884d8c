"""Query features: the numpy lexicon computes scikit-learn's TF-IDF, and a saved lexicon reads the same."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sklearn.feature_extraction.text import TfidfVectorizer

from routers.features import LEXICON_SIZE, Lexicon, QueryFeatures

TEXTS = [
    "What is the integral of x^2 from 0 to 3? The integral, evaluated, is 9.",
    "Which treaty ended the Thirty Years' War in 1648?",
    "A tort is a civil wrong; which of these torts requires intent?",
    "Naïve Bayes: P(A|B) = P(B|A) P(A) / P(B). Café, résumé, 42 résumés.",
    "",
    "x y z",  # no word of two letters or more
]


def test_the_lexicon_computes_scikit_learns_tfidf() -> None:
    lexicon = Lexicon.fit(TEXTS[:4])
    reference = TfidfVectorizer(sublinear_tf=True, max_features=LEXICON_SIZE).fit(TEXTS[:4])
    assert lexicon.terms == reference.get_feature_names_out().tolist()
    unseen = [*TEXTS, "The integral of the integral: TREATY, treaty, treaties."]
    np.testing.assert_allclose(lexicon(unseen), reference.transform(unseen).toarray(), atol=1e-6)
    assert not lexicon(["x y z"]).any()


def test_a_saved_lexicon_reads_the_same(tmp_path: Path) -> None:
    lexicon = Lexicon.fit(TEXTS)
    lexicon.save(tmp_path / "lexicon.npz")
    np.testing.assert_array_equal(Lexicon.load(tmp_path / "lexicon.npz")(TEXTS), lexicon(TEXTS))


def test_kinds() -> None:
    features = QueryFeatures.fit("static+lexical", TEXTS)
    assert features.cheap and features.encoder == "static" and features.lexicon is not None
    assert features(TEXTS[:2]).shape == (2, len(features.lexicon.terms) + 384)
    assert not QueryFeatures.fit("contextual", TEXTS).cheap
    with pytest.raises(ValueError, match="unknown feature kind"):
        QueryFeatures.fit("bag-of-words", TEXTS)
