"""POST /v1/embeddings and /v1/rerank: conversions onto the engine's embedding batches.

Every input of a request (and of concurrent requests) is embedded together, as many per
decode as the model's embedding context holds; see engine/embeddings.py.
"""

from __future__ import annotations

import base64
from typing import Annotated, Literal

from fastapi import APIRouter, Request
from pydantic import Field, StrictBool, StrictInt

from ferrousforge.api.openapi import ERROR_RESPONSES
from ferrousforge.api.routes import model_for, state
from ferrousforge.api.schemas import (
    MAX_NAME_CHARS,
    MAX_TEXT_CHARS,
    Text,
    TokenIds,
    _Body,
)

router = APIRouter()

MAX_INPUTS = 2048  # OpenAI's own limit per request
MAX_DOCUMENTS = 1024

EmbeddingInput = (
    Text
    | Annotated[list[Text], Field(min_length=1, max_length=MAX_INPUTS)]
    | TokenIds
    | Annotated[list[TokenIds], Field(min_length=1, max_length=MAX_INPUTS)]
)


class EmbeddingRequest(_Body):
    """OpenAI's embeddings request, plus ``truncate`` (cut over-long inputs, as TEI and
    Ollama accept it) and ``normalize`` (default true: unit-length vectors)."""

    model: str | None = Field(None, max_length=MAX_NAME_CHARS)
    input: EmbeddingInput
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: StrictInt | None = Field(None, ge=1, le=1 << 16)
    user: str | None = Field(None, max_length=MAX_NAME_CHARS)
    truncate: StrictBool = False
    normalize: StrictBool = True

    def inputs(self) -> list[str | list[int]]:
        x = self.input
        if isinstance(x, str):
            return [x]
        if x and isinstance(x[0], int):
            return [x]  # type: ignore[list-item]
        return list(x)  # type: ignore[arg-type]


class RerankRequest(_Body):
    """llama-server's and Jina/Cohere's rerank request (``texts`` is TEI's name)."""

    model: str | None = Field(None, max_length=MAX_NAME_CHARS)
    query: Annotated[str, Field(max_length=MAX_TEXT_CHARS)]
    documents: Annotated[list[Text], Field(min_length=1, max_length=MAX_DOCUMENTS)] | None = None
    texts: Annotated[list[Text], Field(min_length=1, max_length=MAX_DOCUMENTS)] | None = None
    top_n: StrictInt | None = Field(None, ge=1, le=MAX_DOCUMENTS)
    return_documents: StrictBool = False
    return_text: StrictBool = False  # TEI's name for return_documents
    truncate: StrictBool = False

    def docs(self) -> list[str]:
        if (self.documents is None) == (self.texts is None):
            raise ValueError("documents: give the documents to rank (or TEI's 'texts')")
        return self.documents if self.documents is not None else self.texts  # type: ignore[return-value]


@router.post("/v1/embeddings", responses=ERROR_RESPONSES)
@router.post("/embeddings", responses=ERROR_RESPONSES, include_in_schema=False)
async def create_embeddings(body: EmbeddingRequest, request: Request) -> dict:
    """One vector per input; all inputs share the model's embedding decodes."""
    backend = state(request).pool.backend
    async with model_for(request, body.model) as (mid, lm):
        result = await backend.embed(
            lm.handle,
            body.inputs(),
            normalize=body.normalize,
            dimensions=body.dimensions,
            truncate=body.truncate,
        )
    as_base64 = body.encoding_format == "base64"
    data = [
        {
            "object": "embedding",
            "index": i,
            # base64: the float32 bytes, little-endian, as OpenAI sends them
            "embedding": base64.b64encode(vec.astype("<f4").tobytes()).decode()
            if as_base64
            else vec.tolist(),
        }
        for i, vec in enumerate(result.vectors)
    ]
    n = result.prompt_tokens
    return {
        "object": "list",
        "data": data,
        "model": mid,
        "usage": {"prompt_tokens": n, "total_tokens": n},
    }


@router.post("/v1/rerank", responses=ERROR_RESPONSES)
@router.post("/rerank", responses=ERROR_RESPONSES)
@router.post("/v1/reranking", responses=ERROR_RESPONSES, include_in_schema=False)
async def rerank(body: RerankRequest, request: Request) -> dict:
    """Documents ordered by relevance to the query (a reranker model: rank pooling)."""
    docs = body.docs()
    backend = state(request).pool.backend
    async with model_for(request, body.model) as (mid, lm):
        result = await backend.rerank(lm.handle, body.query, docs, truncate=body.truncate)
    scores = [float(v[0]) for v in result.vectors]
    order = sorted(range(len(docs)), key=lambda i: -scores[i])
    if body.top_n is not None:
        order = order[: body.top_n]
    with_docs = body.return_documents or body.return_text
    results = [
        {
            "index": i,
            "relevance_score": scores[i],
            **({"document": {"text": docs[i]}} if with_docs else {}),
        }
        for i in order
    ]
    n = result.prompt_tokens
    return {
        "object": "list",
        "model": mid,
        "results": results,
        "usage": {"prompt_tokens": n, "total_tokens": n},
    }
