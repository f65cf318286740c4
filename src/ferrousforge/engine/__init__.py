"""Continuous batching over token ids: sequences, scheduler, output stage, engine thread.

Knows nothing of HTTP or of llama.cpp: a Runner executes each planned step.
"""
