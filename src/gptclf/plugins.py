"""Imports the modules that register extra architectures, tokenizers and model names."""
