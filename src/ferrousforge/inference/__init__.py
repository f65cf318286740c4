"""Backends that execute models: the protocol and its implementations."""
