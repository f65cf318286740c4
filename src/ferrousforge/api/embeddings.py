"""POST /v1/embeddings, llama-server's /embedding and /v1/rerank: conversions onto the
engine's embedding batches.

Every input of a request (and of concurrent requests) is embedded together, as many per
decode as the model's embedding context holds; see engine/embeddings.py.
"""

from __future__ import annotations

import base64
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Request
from pydantic import BeforeValidator, Field, StrictBool, StrictInt

from ferrousforge.api.embedding_inputs import Prompt, parse_prompts
from ferrousforge.api.openapi import ERROR_RESPONSES
from ferrousforge.api.routes import model_for, state
from ferrousforge.api.schemas import (
    MAX_NAME_CHARS,
    MAX_TEXT_CHARS,
    KeepAlive,
    Text,
    _Body,
)
from ferrousforge.models.units import parse_duration

router = APIRouter()

MAX_DOCUMENTS = 1024


class EmbeddingRequest(_Body):
    """OpenAI's embeddings request, with the input shapes llama-server takes (see
    embedding_inputs.py), plus ``truncate`` (cut over-long inputs, as TEI and Ollama
    accept it), ``normalize`` (default true) and llama-server's ``embd_normalize`` (how:
    -1 none, 0 max absolute (int16 range), 1 taxicab, 2 Euclidean, the default, p > 2
    p-norm). ``content`` instead of ``input`` asks for llama-server's /embedding answer."""

    model: str | None = Field(None, max_length=MAX_NAME_CHARS)
    input: Any = None
    content: Any = None
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: StrictInt | None = Field(None, ge=1, le=1 << 16)
    user: str | None = Field(None, max_length=MAX_NAME_CHARS)
    truncate: StrictBool = False
    normalize: StrictBool = True
    embd_normalize: StrictInt | None = Field(None, ge=-1, le=64)
    keep_alive: KeepAlive = None  # Ollama's, as on the generation routes

    def prompts(self) -> list[Prompt]:
        if self.input is not None:
            return parse_prompts(self.input, "input")
        if self.content is not None:
            return parse_prompts(self.content, "content")
        raise ValueError("input: give the text to embed ('input', or llama-server's 'content')")

    @property
    def norm(self) -> int:
        return 2 if self.embd_normalize is None else self.embd_normalize


def _document_text(value: Any) -> Any:
    """Jina's and Cohere's document objects, ``{"text": ...}``, stand for their text."""
    if not isinstance(value, dict):
        return value
    if set(value) == {"text"} and isinstance(value["text"], str):
        return value["text"]
    raise ValueError("a document is a text or {'text': ...} (this server ranks only texts)")


Document = Annotated[Text, BeforeValidator(_document_text)]


class RerankRequest(_Body):
    """llama-server's and Jina/Cohere's rerank request (``texts`` is TEI's name); a document
    is a string or Jina/Cohere's ``{"text": ...}``."""

    model: str | None = Field(None, max_length=MAX_NAME_CHARS)
    query: Annotated[str, Field(max_length=MAX_TEXT_CHARS)]
    documents: Annotated[list[Document], Field(min_length=1, max_length=MAX_DOCUMENTS)] | None = (
        None
    )
    texts: Annotated[list[Text], Field(min_length=1, max_length=MAX_DOCUMENTS)] | None = None
    top_n: StrictInt | None = Field(None, ge=1, le=MAX_DOCUMENTS)
    return_documents: StrictBool = False
    return_text: StrictBool = False  # TEI's name for return_documents
    truncate: StrictBool = False
    keep_alive: KeepAlive = None

    def docs(self) -> list[str]:
        if (self.documents is None) == (self.texts is None):
            raise ValueError("documents: give the documents to rank (or TEI's 'texts')")
        return self.documents if self.documents is not None else self.texts  # type: ignore[return-value]


def _model(request: Request, body: Any):
    """The model an embedding, per-token or rerank request names, admitted to embeddings."""
    return model_for(request, body.model, parse_duration(body.keep_alive), embeddings=True)


@router.post("/v1/embeddings", responses=ERROR_RESPONSES)
async def create_embeddings(body: EmbeddingRequest, request: Request) -> Any:
    """One vector per input; all inputs share the model's embedding decodes."""
    if body.input is None and body.content is not None:
        return await native_embeddings(body, request)  # as llama-server answers 'content'
    prompts = body.prompts()
    backend = state(request).pool.backend
    async with _model(request, body) as (mid, lm):
        result = await backend.embed(
            lm.handle,
            prompts,
            normalize=body.normalize,
            dimensions=body.dimensions,
            truncate=body.truncate,
            norm=body.norm,
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


@router.post("/embedding", responses=ERROR_RESPONSES)
@router.post("/embeddings", responses=ERROR_RESPONSES)
async def native_embeddings(body: EmbeddingRequest, request: Request) -> list[dict]:
    """llama-server's /embedding: per input, ``embedding`` is a list of vectors, the pooled
    one, or one per token when the model's pooling is "none" (then not normalised)."""
    for name in ("dimensions", "encoding_format"):
        if name in body.model_fields_set:
            raise ValueError(f"{name}: only /v1/embeddings takes it")
    if not body.normalize:
        raise ValueError("normalize: /embedding takes 'embd_normalize': -1 for none")
    prompts = body.prompts()
    backend = state(request).pool.backend
    async with _model(request, body) as (_, lm):
        mats, _ = await backend.embed_per_token(
            lm.handle, prompts, norm=body.norm, truncate=body.truncate
        )
    return [{"index": i, "embedding": m.tolist()} for i, m in enumerate(mats)]


@router.post("/v1/rerank", responses=ERROR_RESPONSES)
@router.post("/rerank", responses=ERROR_RESPONSES)
@router.post("/v1/reranking", responses=ERROR_RESPONSES, include_in_schema=False)
async def rerank(body: RerankRequest, request: Request) -> dict | list[dict]:
    """Documents ordered by relevance to the query (a reranker model: rank pooling); TEI's
    bare list when the request names them ``texts``."""
    docs = body.docs()
    backend = state(request).pool.backend
    async with _model(request, body) as (mid, lm):
        result = await backend.rerank(lm.handle, body.query, docs, truncate=body.truncate)
    scores = [float(v[0]) for v in result.vectors]
    order = sorted(range(len(docs)), key=lambda i: -scores[i])
    if body.top_n is not None:
        order = order[: body.top_n]
    if body.texts is not None:  # TEI's request, TEI's answer: a bare list
        return [
            {"index": i, "score": scores[i], **({"text": docs[i]} if body.return_text else {})}
            for i in order
        ]
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
        "model": body.model or mid,
        "results": results,
        "usage": {"prompt_tokens": n, "total_tokens": n},
    }
