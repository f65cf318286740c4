"""FerrousForge: run and serve GGUF models on llama.cpp from Python."""

__version__ = "0.1.0"
