"""evo: overnight evolutionary search over LLM training scripts."""

__version__ = "0.1.0"
