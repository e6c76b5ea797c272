"""HTTP search service (FastAPI): ``POST /search``, ``POST /encode``, ``GET /health``.

Concurrency: every request is put on an asyncio queue; one batcher task takes the first waiting
request, then keeps collecting for up to ``batch_wait_ms`` (or until ``max_batch_queries``
queries), and runs ONE ``index.search`` call (query encoding + search) per distinct ``filter``
of the group on a single worker thread (torch is only ever touched from that thread). Each
request then gets its own slice of the results, cut to its own ``k``, with the stored ``fields``
it asked for. Encode requests go through the same thread.

``filter`` (optional) is the index's metadata filter (``colzero.index.filters``), applied before
ranking: ``{"year": [2019, 2020], "source": "pubmed"}``.

Limits (clear 4xx): empty or whitespace-only texts, more than ``max_queries`` per request,
texts longer than ``max_chars``, ``k`` outside ``1..max_k`` -> 422; request bodies larger than
``max_body_bytes`` -> 413.
"""

import asyncio
import concurrent.futures
import json
import logging
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field, field_validator, model_validator

from colzero.index.filters import compile_filter

logger = logging.getLogger(__name__)


@dataclass
class ServeLimits:
    max_k: int = 100
    max_queries: int = 32
    max_chars: int = 2000
    max_body_bytes: int = 1 << 20
    batch_wait_ms: float = 3.0
    max_batch_queries: int = 64


@dataclass
class _Job:
    kind: str
    texts: list[str]
    k: int
    role: str
    future: asyncio.Future
    filter: dict[str, Any] | None = None
    fields: list[str] | None = None
    group_key: str = field(init=False)

    def __post_init__(self) -> None:
        self.group_key = json.dumps(self.filter, sort_keys=True)


def _make_models(limits: ServeLimits):
    def check_texts(texts: list[str]) -> list[str]:
        if len(texts) > limits.max_queries:
            raise ValueError(f"at most {limits.max_queries} texts per request, got {len(texts)}")
        for i, t in enumerate(texts):
            if not t.strip():
                raise ValueError(f"text {i} is empty")
            if len(t) > limits.max_chars:
                raise ValueError(f"text {i} has {len(t)} characters, the limit is {limits.max_chars}")
        return texts

    class SearchRequest(BaseModel):
        """Either ``query`` (one string) or ``queries`` (a list), and ``k``."""

        query: str | None = Field(None, description="one query")
        queries: list[str] | None = Field(None, description="several queries, searched as one batch")
        k: int = Field(10, ge=1, le=limits.max_k, description=f"results per query, 1..{limits.max_k}")
        filter: dict[str, Any] | None = Field(
            None,
            description='only documents whose stored fields match, e.g. {"year": [2019, 2020]} '
            "(every field must match; a list means any of; null: missing; _id: the id)",
        )
        fields: list[str] | None = Field(
            None, description='stored fields to return with each hit, e.g. ["title", "text"]'
        )

        @model_validator(mode="after")
        def one_of(self):
            if (self.query is None) == (self.queries is None):
                raise ValueError("give exactly one of 'query' or 'queries'")
            if self.queries is not None and not self.queries:
                raise ValueError("'queries' is empty")
            check_texts(self.texts())
            if self.filter is not None:
                compile_filter(self.filter)  # a malformed filter is a 422, not a 500
            return self

        def texts(self) -> list[str]:
            return [self.query] if self.query is not None else list(self.queries or [])

    class Hit(BaseModel):
        id: str
        score: float
        fields: dict[str, Any] | None = None

    class SearchResponse(BaseModel):
        results: list[list[Hit]]

    class EncodeRequest(BaseModel):
        texts: list[str] = Field(..., min_length=1, max_length=limits.max_queries)
        role: Literal["query", "document"] = "query"

        @field_validator("texts")
        @classmethod
        def valid(cls, texts: list[str]) -> list[str]:
            return check_texts(texts)

    class EncodeResponse(BaseModel):
        embeddings: list[list[list[float]]]

    return SearchRequest, SearchResponse, EncodeRequest, EncodeResponse


def create_app(index, model=None, limits: ServeLimits | None = None) -> FastAPI:
    """An app serving ``index`` (a loaded :class:`colzero.index.Index` with its model)."""
    limits = limits or ServeLimits()
    model = model if model is not None else index.model
    if model is None:
        raise ValueError("the server needs the index's model (Index.load(path, model))")
    if index.model is None:
        index.attach_model(model)
    SearchRequest, SearchResponse, EncodeRequest, EncodeResponse = _make_models(limits)
    executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="colzero-torch")
    stats = {"requests": 0, "batches": 0, "queries": 0}

    def run_search_batch(jobs: list[_Job]) -> list[list]:
        """Per job, its queries' hits: (id, score, fields or None), one search per filter."""
        out: dict[int, list] = {}
        for key in dict.fromkeys(j.group_key for j in jobs):
            same = [j for j in jobs if j.group_key == key]
            texts = [t for j in same for t in j.texts]
            results = index.search(texts, k=max(j.k for j in same), filter=same[0].filter)
            pos = 0
            for j in same:
                part = [hits[: j.k] for hits in results[pos : pos + len(j.texts)]]
                pos += len(j.texts)
                if j.fields is not None:
                    part = [
                        [
                            (d, s, f)
                            for (d, s), f in zip(h, index.fields([d for d, _ in h], j.fields), strict=True)
                        ]
                        for h in part
                    ]
                else:
                    part = [[(d, s, None) for d, s in h] for h in part]
                out[id(j)] = part
        return [out[id(j)] for j in jobs]

    def run_encode(job: _Job):
        import torch

        with torch.inference_mode():
            vecs = model.encode(job.texts, job.role)
        return [v.float().tolist() for v in vecs]

    async def batcher(queue: asyncio.Queue) -> None:
        loop = asyncio.get_running_loop()
        while True:
            first: _Job = await queue.get()
            if first.kind == "encode":
                await _run(loop, first, run_encode, first)
                continue
            group = [first]
            n = len(first.texts)
            deadline = loop.time() + limits.batch_wait_ms / 1000
            pending_encode = []
            while n < limits.max_batch_queries:
                timeout = deadline - loop.time()
                if timeout <= 0:
                    break
                try:
                    job = await asyncio.wait_for(queue.get(), timeout)
                except TimeoutError:
                    break
                if job.kind == "encode":
                    pending_encode.append(job)
                    continue
                group.append(job)
                n += len(job.texts)
            stats["batches"] += 1
            stats["queries"] += n
            try:
                results = await loop.run_in_executor(executor, run_search_batch, group)
            except Exception as exc:  # give every waiting request the error
                for j in group:
                    if not j.future.done():
                        j.future.set_exception(exc)
            else:
                for j, part in zip(group, results, strict=True):
                    if not j.future.done():
                        j.future.set_result(part)
            for job in pending_encode:
                await _run(loop, job, run_encode, job)

    async def _run(loop, job: _Job, fn, arg) -> None:
        try:
            result = await loop.run_in_executor(executor, fn, arg)
        except Exception as exc:
            if not job.future.done():
                job.future.set_exception(exc)
        else:
            if not job.future.done():
                job.future.set_result(result)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        queue: asyncio.Queue = asyncio.Queue()
        app.state.queue = queue
        task = asyncio.create_task(batcher(queue))
        try:
            yield
        finally:
            task.cancel()
            executor.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(
        title="colzero search",
        description="ColBERT (MaxSim) search over a PLAID-style index.",
        lifespan=lifespan,
    )
    app.state.limits = limits
    app.state.stats = stats

    @app.middleware("http")
    async def limit_body(request: Request, call_next):
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > limits.max_body_bytes:
            return JSONResponse(
                {"detail": f"request body of {length} bytes exceeds the limit of {limits.max_body_bytes}"},
                status_code=413,
            )
        if request.method == "POST" and length is None:
            body = await request.body()  # chunked: read it (bounded below) before the handler
            if len(body) > limits.max_body_bytes:
                return JSONResponse({"detail": f"request body exceeds {limits.max_body_bytes} bytes"}, 413)
        return await call_next(request)

    async def submit(kind: str, texts: list[str], k: int = 0, role: str = "query", **extra: Any):
        fut = asyncio.get_running_loop().create_future()
        stats["requests"] += 1
        await app.state.queue.put(_Job(kind, texts, k, role, fut, **extra))
        return await fut

    @app.post("/search", response_model=SearchResponse, response_model_exclude_none=True)
    async def search(req: SearchRequest):
        """Top-k documents per query by MaxSim, among those matching ``filter``."""
        t0 = time.perf_counter()
        results = await submit("search", req.texts(), req.k, filter=req.filter, fields=req.fields)
        logger.debug("search %d queries in %.1f ms", len(req.texts()), 1000 * (time.perf_counter() - t0))
        return {"results": [[{"id": d, "score": s, "fields": f} for d, s, f in hits] for hits in results]}

    @app.post("/encode", response_model=EncodeResponse)
    async def encode(req: EncodeRequest):
        """Token embeddings, (n_tokens, dim) per text."""
        return {"embeddings": await submit("encode", req.texts, role=req.role)}

    @app.get("/health")
    async def health():
        return {
            "status": "ok",
            "documents": len(index),
            "model_fingerprint": index.fingerprint,
            "limits": limits.__dict__,
            "stats": dict(stats),
        }

    return app


def serve(
    index, model=None, host: str = "127.0.0.1", port: int = 8000, limits: ServeLimits | None = None
) -> None:
    import uvicorn

    uvicorn.run(create_app(index, model, limits), host=host, port=port, log_level="warning")
