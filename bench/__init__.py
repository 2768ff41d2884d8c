"""Benchmarks, each run from the repository root as `python -m bench.<name>` (see each module's docstring).

Benchmarks read only local models and litellm's bundled cost map: set here, before any of them imports
huggingface_hub or litellm (both read these once, at import), unless the caller chose otherwise.
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
