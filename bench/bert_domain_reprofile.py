"""bert-domain for all seven models without a second fine-tune: reuse the small-experts artifact's classifier.

The domain classifier is trained on the same queries and labels whatever the experts, so only the
domain-to-expert quality tables and the threshold are refitted; then measured like routers_quick.py
(train_seconds: this refit plus the small artifact's fine-tune).

    HF_HUB_OFFLINE=1 .venv/bin/python bench/bert_domain_reprofile.py
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from routers_quick import RESULTS, measure  # noqa: E402

from routers import load_router  # noqa: E402
from routers.bert_domain import BertDomainRouter  # noqa: E402
from routers.quality import profiles_of  # noqa: E402
from training.dataset import load_dataset  # noqa: E402

SOURCE = Path("var/routers/bert-domain-small")
TARGET = Path("var/routers/bert-domain-all")


def main() -> None:
    data = load_dataset(None)
    source = load_router(SOURCE, profiles_of(data))
    assert isinstance(source, BertDomainRouter)
    started = time.perf_counter()
    router = BertDomainRouter(profiles_of(data)).fit(
        data.of_split("train"), data.of_split("dev"), classifier=source.classifier
    )
    router.save(TARGET)
    results = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
    fine_tune_seconds = results.get("bert-domain-small", {}).get("train_seconds", 0.0)
    row = measure("bert-domain", "all", {"train_seconds": fine_tune_seconds + time.perf_counter() - started})
    results = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
    results["bert-domain-all"] = row
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(f"bert-domain-all: {json.dumps(row)}", flush=True)


if __name__ == "__main__":
    main()
