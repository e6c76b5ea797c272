"""HTTP search service (FastAPI): ``POST /search``, ``POST /encode``, ``GET /health``.

Requests, in order:

1. **Body** (:class:`BodyLimit`, plain ASGI, before anything else): bytes are counted as they
   arrive, chunked or not; past ``max_body_bytes`` the answer is 413 at once and the rest of the
   body is discarded as it comes (never held), so memory stays bounded whatever the sender does.
2. **JSON**: parsed strictly: ``NaN`` and ``Infinity`` (which Python's ``json`` accepts) and
   nesting deeper than Python's recursion limit are 422, like malformed JSON.
3. **Schema**: unknown keys are 422 naming the key and the closest known one (``filters``: did
   you mean ``filter``?); types are strict (``k: true`` and ``k: 1.0`` are not integers).
4. **Values** (what could otherwise fail inside a batch): texts non-empty, at most
   ``max_chars`` characters and ``max_queries`` per request, valid Unicode (no lone surrogates);
   ``k`` in ``1..max_k``; the ``filter`` within ``colzero.index.filters``'s stated limits
   (64-bit integers, finite numbers, valid Unicode, at most 64 fields and 1,024 values, one
   level deep); ``fields`` at most 64 names.

Only then does a request join a batch: one batcher task takes the first waiting request, keeps
collecting for up to ``batch_wait_ms`` (or ``max_batch_queries`` queries), and runs one
``index.search`` per distinct filter on a single worker thread (torch and the index are only
ever touched from that thread). If a search still fails, its requests are retried one by one, so
that only the request that fails gets the error: 422 for bad input, 500 with an ``error_id``
(logged with the traceback) for a server fault. Every error is an ordinary response, so the
connection stays open for the next request.

The index follows its folder: before each batch the worker checks whether a new generation was
published (one ``stat``) and switches to it (``Index.refresh``), so a batch never mixes two
generations and a change that has been reported done is in every batch that starts after it.
``GET /health`` checks too and reports the generation and document count.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import difflib
import json
import logging
import time
import uuid
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from colzero.index.filters import FilterError, check_filter, unicode_problem

logger = logging.getLogger(__name__)

#: names a request may ask for in ``fields``
MAX_FIELD_NAMES = 64


@dataclass
class ServeLimits:
    """What one request may ask for (each breach is a 4xx naming it), and how requests batch."""

    max_k: int = 100
    max_queries: int = 32
    max_chars: int = 2000
    max_body_bytes: int = 1 << 20
    batch_wait_ms: float = 3.0
    max_batch_queries: int = 64


class RequestError(ValueError):
    """A request the service refuses: its status, and ``detail`` entries ``{loc, msg, type}``."""

    def __init__(self, status: int, detail: list[dict[str, Any]]) -> None:
        super().__init__("; ".join(f"{'.'.join(map(str, d['loc']))}: {d['msg']}" for d in detail))
        self.status = status
        self.detail = detail


def _bad(loc: list[Any], msg: str, kind: str = "value_error") -> RequestError:
    return RequestError(422, [{"loc": ["body", *loc], "msg": msg, "type": kind}])


# ---------------------------------------------------------------------------- body and JSON
class BodyLimit:
    """ASGI middleware: a request body larger than ``limit`` bytes is answered 413 as soon as the
    count passes the limit (a ``Content-Length`` above it: before reading any of it). The body of
    an accepted request is handed on in one piece."""

    def __init__(self, app: Any, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.limit):
            await _send_json(send, 413, {"detail": self._too_large(length.decode("latin-1"))})
            return
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body = message.get("body", b"")
            size += len(body)
            if size > self.limit:
                await _send_json(send, 413, {"detail": self._too_large(f"more than {self.limit:,}")})
                return
            chunks.append(body)
            if not message.get("more_body", False):
                break
        whole = b"".join(chunks)
        del chunks
        replayed = False

        async def replay() -> dict:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": whole, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    def _too_large(self, size: str) -> str:
        return f"request body of {size} bytes exceeds the limit of {self.limit:,} bytes"


async def _send_json(send: Any, status: int, content: dict) -> None:
    body = json.dumps(content).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed (JSON numbers are finite)")


def parse_json(body: bytes) -> Any:
    """The request's JSON; :class:`RequestError` (422) for anything ``json`` would not write."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _bad([], f"the body is not UTF-8 (byte {exc.start})", "json_invalid") from None
    try:
        return json.loads(text, parse_constant=_refuse_constant)
    except json.JSONDecodeError as exc:
        raise _bad(
            [], f"invalid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})", "json_invalid"
        ) from None
    except RecursionError:
        raise _bad([], "invalid JSON: nested too deeply", "json_invalid") from None
    except ValueError as exc:  # NaN / Infinity, an integer of more than 4,300 digits
        raise _bad([], f"invalid JSON: {exc}", "json_invalid") from None


# ---------------------------------------------------------------------------- schemas
def _make_models(limits: ServeLimits) -> tuple[type[BaseModel], ...]:
    strict = ConfigDict(extra="forbid", strict=True)

    class SearchRequest(BaseModel):
        """Either ``query`` (one string) or ``queries`` (a list), and ``k``."""

        model_config = strict
        query: str | None = Field(None, description="one query")
        queries: list[str] | None = Field(None, description="several queries, searched as one batch")
        k: int = Field(10, ge=1, le=limits.max_k, description=f"results per query, 1..{limits.max_k}")
        filter: dict[str, Any] | None = Field(
            None,
            description='only documents whose stored fields match, e.g. {"year": [2019, 2020]} '
            "(every field must match; a list means any of; null: missing; _id: the id). Values: "
            "strings, 64-bit integers, finite numbers, booleans, null; at most 64 fields and "
            "1,024 values",
        )
        fields: list[str] | None = Field(
            None,
            max_length=MAX_FIELD_NAMES,
            description='stored fields to return with each hit, e.g. ["title", "text"]',
        )

        def texts(self) -> list[str]:
            return [self.query] if self.query is not None else list(self.queries or [])

    class Hit(BaseModel):
        id: str
        score: float
        fields: dict[str, Any] | None = None

    class SearchResponse(BaseModel):
        results: list[list[Hit]]
        generation: int

    class EncodeRequest(BaseModel):
        model_config = strict
        texts: list[str] = Field(..., min_length=1, max_length=limits.max_queries)
        role: Literal["query", "document"] = "query"

    class EncodeResponse(BaseModel):
        embeddings: list[list[list[float]]]

    return SearchRequest, SearchResponse, EncodeRequest, EncodeResponse


def _validate(model: type[BaseModel], data: Any) -> Any:
    """``model`` from parsed JSON; a :class:`RequestError` whose entries name each bad key."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        known = list(model.model_fields)
        detail = []
        for err in exc.errors(include_url=False, include_input=False, include_context=False):
            loc = list(err["loc"])
            msg = err["msg"]
            if err["type"] == "extra_forbidden":
                key = loc[-1]
                close = difflib.get_close_matches(str(key), known, n=1, cutoff=0.6)
                hint = f"; did you mean {close[0]!r}?" if close else f" (known keys: {', '.join(known)})"
                msg = f"unknown key {key!r}{hint}"
            detail.append({"loc": ["body", *loc], "msg": msg, "type": err["type"]})
        raise RequestError(422, detail) from None


def check_texts(texts: list[str], limits: ServeLimits, key: str) -> None:
    """Texts the encoder takes: at most ``max_queries``, non-empty, ``max_chars``, valid Unicode."""
    if len(texts) > limits.max_queries:
        raise _bad([key], f"at most {limits.max_queries} texts per request, got {len(texts)}")
    for i, t in enumerate(texts):
        loc = [key] if key == "query" else [key, i]
        if not t.strip():
            raise _bad(loc, f"text {i} is empty")
        if len(t) > limits.max_chars:
            raise _bad(loc, f"text {i} has {len(t)} characters, the limit is {limits.max_chars}")
        problem = unicode_problem(t)
        if problem:
            raise _bad(loc, f"text {i} {problem}")


def check_search(req: Any, limits: ServeLimits) -> None:
    if (req.query is None) == (req.queries is None):
        raise _bad([], "give exactly one of 'query' or 'queries'")
    if req.queries is not None and not req.queries:
        raise _bad(["queries"], "'queries' is empty")
    check_texts(req.texts(), limits, "query" if req.query is not None else "queries")
    if req.filter is not None:
        try:
            check_filter(req.filter)
        except FilterError as exc:
            raise _bad(["filter", *exc.path], str(exc)) from None
    for i, name in enumerate(req.fields or []):
        problem = unicode_problem(name)
        if problem or not name or len(name) > 256:
            raise _bad(["fields", i], f"a field name is 1 to 256 characters of valid Unicode ({name[:40]!r})")


# ---------------------------------------------------------------------------- batching
@dataclass
class _Job:
    kind: str
    texts: list[str]
    future: asyncio.Future
    k: int = 0
    role: str = "query"
    filter: dict[str, Any] | None = None
    fields: list[str] | None = None
    group_key: str = field(init=False)

    def __post_init__(self) -> None:
        self.group_key = json.dumps(self.filter, sort_keys=True)


class _Outcome:
    """A job's result or the exception it alone raised."""

    def __init__(self, value: Any = None, error: BaseException | None = None) -> None:
        self.value, self.error = value, error


def _error_response(exc: BaseException) -> JSONResponse:
    """422 for bad input, 503 when the index cannot be served right now, else 500 with an id."""
    from colzero.index import IndexBusyError, IndexCorruptError, ModelMismatchError

    if isinstance(exc, RequestError):
        return JSONResponse({"detail": exc.detail}, status_code=exc.status)
    error_id = uuid.uuid4().hex[:12]
    if isinstance(exc, ModelMismatchError | IndexCorruptError | IndexBusyError | FileNotFoundError):
        logger.error("index unavailable (error %s): %s", error_id, exc)
        return JSONResponse({"detail": f"index unavailable: {exc}", "error_id": error_id}, status_code=503)
    if isinstance(exc, ValueError | KeyError | UnicodeError):  # input the checks above let through
        msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
        return JSONResponse({"detail": [{"loc": ["body"], "msg": str(msg), "type": "value_error"}]}, 422)
    logger.error("internal error %s", error_id, exc_info=exc)
    return JSONResponse({"detail": "internal error", "error_id": error_id}, status_code=500)


def create_app(index: Any, model: Any = None, limits: ServeLimits | None = None) -> Any:
    """An ASGI app serving ``index`` (a loaded :class:`colzero.index.Index` with its model): the
    FastAPI app wrapped in :class:`BodyLimit` (``app.state`` is the FastAPI app's)."""
    limits = limits or ServeLimits()
    model = model if model is not None else index.model
    if model is None:
        raise ValueError("the server needs the index's model (Index.load(path, model))")
    if index.model is None:
        index.attach_model(model)
    SearchRequest, SearchResponse, EncodeRequest, EncodeResponse = _make_models(limits)
    executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="colzero-index")
    stats = {"requests": 0, "batches": 0, "queries": 0, "switches": 0, "errors": 0}

    def refresh() -> None:
        if index.refresh():
            stats["switches"] += 1
            logger.info("serving generation %d (%d documents)", index.generation, len(index))

    def search_jobs(jobs: list[_Job]) -> list[list]:
        """The hits of every job of one filter, in one search."""
        texts = [t for j in jobs for t in j.texts]
        results = index.search(texts, k=max(j.k for j in jobs), filter=jobs[0].filter)
        out, pos = [], 0
        for j in jobs:
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
            out.append(part)
        return out

    def run_search_batch(jobs: list[_Job]) -> list[_Outcome]:
        """Each job's outcome, from one generation; a failing search is retried job by job so that
        only the job that fails gets its error."""
        try:
            refresh()
        except Exception as exc:
            return [_Outcome(error=exc) for _ in jobs]
        generation = index.generation
        outcomes: dict[int, _Outcome] = {}
        for key in dict.fromkeys(j.group_key for j in jobs):
            same = [j for j in jobs if j.group_key == key]
            try:
                for j, part in zip(same, search_jobs(same), strict=True):
                    outcomes[id(j)] = _Outcome((part, generation))
            except Exception as exc:
                if len(same) == 1:
                    outcomes[id(same[0])] = _Outcome(error=exc)
                    continue
                for j in same:
                    try:
                        outcomes[id(j)] = _Outcome((search_jobs([j])[0], generation))
                    except Exception as one:
                        outcomes[id(j)] = _Outcome(error=one)
        return [outcomes[id(j)] for j in jobs]

    def run_encode(job: _Job) -> _Outcome:
        import torch

        try:
            with torch.inference_mode():
                vecs = model.encode(job.texts, job.role)
            return _Outcome([v.float().tolist() for v in vecs])
        except Exception as exc:
            return _Outcome(error=exc)

    def settle(job: _Job, outcome: _Outcome) -> None:
        if not job.future.done():
            if outcome.error is not None:
                job.future.set_exception(outcome.error)
            else:
                job.future.set_result(outcome.value)

    async def batcher(queue: asyncio.Queue) -> None:
        loop = asyncio.get_running_loop()
        while True:
            first: _Job = await queue.get()
            group, pending_encode = [first], []
            try:
                if first.kind == "encode":
                    settle(first, await loop.run_in_executor(executor, run_encode, first))
                    continue
                n = len(first.texts)
                deadline = loop.time() + limits.batch_wait_ms / 1000
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
                outcomes = await loop.run_in_executor(executor, run_search_batch, group)
                for j, outcome in zip(group, outcomes, strict=True):
                    settle(j, outcome)
                for job in pending_encode:
                    settle(job, await loop.run_in_executor(executor, run_encode, job))
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the batcher itself must never stop
                logger.exception("batcher error")
                for j in group + pending_encode:
                    settle(j, _Outcome(error=exc))

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
        description="ColBERT (MaxSim) search over a PLAID-style index that follows its folder's generations.",
        lifespan=lifespan,
    )
    app.state.limits = limits
    app.state.stats = stats

    async def submit(job: _Job) -> Any:
        stats["requests"] += 1
        await app.state.queue.put(job)
        return await job.future

    def body_schema(model_cls: type[BaseModel]) -> dict:
        schema = {
            "content": {"application/json": {"schema": model_cls.model_json_schema()}},
            "required": True,
        }
        return {"requestBody": schema}

    @app.post(
        "/search",
        response_model=SearchResponse,
        response_model_exclude_none=True,
        openapi_extra=body_schema(SearchRequest),
    )
    async def search(request: Request) -> Any:
        """Top-k documents per query by MaxSim, among those matching ``filter``."""
        t0 = time.perf_counter()
        try:
            req = _validate(SearchRequest, parse_json(await request.body()))
            check_search(req, limits)
            fut = asyncio.get_running_loop().create_future()
            job = _Job("search", req.texts(), fut, k=req.k, filter=req.filter, fields=req.fields)
            results, generation = await submit(job)
        except Exception as exc:
            stats["errors"] += 1
            return _error_response(exc)
        logger.debug("search %d queries in %.1f ms", len(req.texts()), 1000 * (time.perf_counter() - t0))
        hits = [[{"id": d, "score": s, "fields": f} for d, s, f in h] for h in results]
        return {"results": hits, "generation": generation}

    @app.post("/encode", response_model=EncodeResponse, openapi_extra=body_schema(EncodeRequest))
    async def encode(request: Request) -> Any:
        """Token embeddings, (n_tokens, dim) per text."""
        try:
            req = _validate(EncodeRequest, parse_json(await request.body()))
            check_texts(req.texts, limits, "texts")
            fut = asyncio.get_running_loop().create_future()
            embeddings = await submit(_Job("encode", req.texts, fut, role=req.role))
        except Exception as exc:
            stats["errors"] += 1
            return _error_response(exc)
        return {"embeddings": embeddings}

    @app.get("/health")
    async def health() -> Any:
        """The generation served (after checking for a newer one), its documents, the limits."""
        try:
            await asyncio.get_running_loop().run_in_executor(executor, refresh)
        except Exception as exc:
            return _error_response(exc)
        return {
            "status": "ok",
            "generation": index.generation,
            "documents": len(index),
            "model_fingerprint": index.fingerprint,
            "limits": asdict(limits),
            "stats": dict(stats),
        }

    wrapped = BodyLimit(app, limits.max_body_bytes)
    wrapped.state = app.state  # type: ignore[attr-defined]
    return wrapped


def serve(
    index: Any,
    model: Any = None,
    host: str = "127.0.0.1",
    port: int = 8000,
    limits: ServeLimits | None = None,
) -> None:
    """Run the app with uvicorn until interrupted."""
    import uvicorn

    uvicorn.run(create_app(index, model, limits), host=host, port=port, log_level="warning")
