"""The router encoder's latency, one query at a time: ONNX Runtime (what routers run) beside eager PyTorch.

Same texts, same thread count, one process: 200 MMLU-Pro test questions and 200 one-line questions.
Writes bench/results/encoder.json with the command that produced it.

    python -m bench.encoder [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from rich.console import Console

from bench.harness import ROOT, command_line, machine, questions

SHORT = [
    "What is the integral of x^2 from 0 to 3?",
    "Who wrote the Critique of Pure Reason?",
    "Explain the difference between a stock and a bond.",
    "How do vaccines train the immune system?",
]


def p50_ms(embed: Callable[[list[str]], object], texts: Sequence[str]) -> float:
    for text in texts[:10]:  # warm-up: first shapes, arenas
        embed([text])
    latencies = []
    for text in texts:
        started = time.perf_counter()
        embed([text])
        latencies.append((time.perf_counter() - started) * 1000)
    return round(statistics.median(latencies), 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--out", type=Path, default=ROOT / "bench/results/encoder.json")
    args = parser.parse_args()
    os.environ["MOE_ENCODER_THREADS"] = str(args.threads)
    import torch
    from sentence_transformers import SentenceTransformer

    from routers import encoder

    torch.set_num_threads(args.threads)
    reference = SentenceTransformer(str(encoder._model_path()), device="cpu")
    reference.max_seq_length = encoder.MAX_SEQ_LENGTH
    onnx = encoder.load_encoder()
    sets = {"mmlu_pro_question": questions(200), "one_line_question": SHORT * 50}
    results = {
        name: {
            "mean_word_pieces": round(statistics.fmean(len(onnx.tokenizer.encode(t).ids) for t in texts), 1),
            "onnxruntime_p50_ms": p50_ms(onnx, texts),
            "pytorch_p50_ms": p50_ms(lambda batch: reference.encode(batch, normalize_embeddings=True), texts),
        }
        for name, texts in sets.items()
    }
    report = {"command": command_line(), "machine": machine(), "threads": args.threads,
              "encoder": encoder.encoder_id(), "results": results}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    Console().print_json(data=results)


if __name__ == "__main__":
    main()
