"""gptclf: fine-tune a pretrained decoder LLM into a text classifier (the book's chapter 6).

Python API::

    import gptclf
    lm = gptclf.load_model("gpt2-small")            # the language model, before the head swap
    clf = gptclf.Classifier.load("runs/latest")      # a fine-tuned classifier
    clf.predict(["WINNER!! Claim your prize now"])   # [{"label": "spam", "score": 0.99, ...}]
"""

from __future__ import annotations

__version__ = "0.1.0"

from typing import TYPE_CHECKING, Any

__all__ = ["load_model", "Classifier", "GptclfError", "TrainConfig", "train", "__version__"]

from .errors import GptclfError


def load_model(name_or_path: str, init: str = "pretrained") -> Any:
    """The backbone language model (vocabulary head on): ``model(ids) -> [batch, seq, vocab]``."""
    from .loading import load_model as _load

    return _load(name_or_path, init)


def train(**options: Any) -> Any:
    """Run ``gptclf train`` from Python (the same options, as keywords); returns the run directory."""
    from .config import TrainConfig
    from .training.recipe import run_training

    return run_training(TrainConfig(**options))


def __getattr__(name: str) -> Any:
    # Lazy so that ``import gptclf`` stays fast for the CLI's --help.
    if name == "Classifier":
        from .inference.classifier import Classifier

        return Classifier
    if name == "TrainConfig":
        from .config import TrainConfig

        return TrainConfig
    raise AttributeError(name)


if TYPE_CHECKING:  # pragma: no cover
    from .config import TrainConfig
    from .inference.classifier import Classifier
