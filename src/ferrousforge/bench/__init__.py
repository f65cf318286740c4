"""Benchmarks: `ferrousforge bench engine` (offline, against raw llama_decode) and
`ferrousforge bench serve` (any OpenAI-compatible server under concurrent load)."""
