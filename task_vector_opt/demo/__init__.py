"""Offline demo assets: SmolLM2-135M-Instruct from PyPI, a word-code skill, and its fine-tunes."""
