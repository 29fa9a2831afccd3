"""Optimize the weights of a task vector (chat vector) added to a language model, with Optuna."""
__version__ = "0.1.0"
