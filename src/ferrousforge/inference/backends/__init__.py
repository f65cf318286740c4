"""Concrete inference backends."""
