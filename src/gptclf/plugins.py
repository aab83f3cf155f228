"""Imports the modules that register extra architectures, tokenizers and model names."""

from .models import llama  # noqa: F401  (arch "llama", HF model_type "llama")
from . import ggufload  # noqa: F401  (GGUF files, "smollm2-135m", tokenizer "hf-tokenizers")
