"""HTTP API for social-app backends: upload a photo, poll or get a webhook, fetch or share the video.

One error format everywhere: ``{"error": {"code": ..., "message": ..., "status": N}}``. Auth with
``Authorization: Bearer <key>`` or ``X-API-Key``; keys are stored hashed. The key is checked, and
the rate limits (shared by every API process, in Redis) are applied, by an ASGI middleware before
any of the body is read: a wrong key gets 401 without its upload being consumed. Uploads are
multipart, size-checked while the body streams in, never fetched from a URL; the photo is decoded
and stripped of its metadata in the request (only the sanitised pixels are stored), and every
option a job could fail on before generation is checked before the job exists.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import re
import secrets
import threading
import time
from pathlib import Path
from typing import Any, Literal

import anyio
from fastapi import Depends, FastAPI, File, Form, Header, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import (FileResponse, HTMLResponse, JSONResponse, PlainTextResponse, RedirectResponse,
                               Response, StreamingResponse)
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.trustedhost import TrustedHostMiddleware

import pipeline
from pipeline.engines import GenerationOptions
from pipeline.finish import StoryOptions
from pipeline.errors import AliveError, ConfigError, InputRejected, TransientError
from pipeline.jobs import Keys
from pipeline.storage import LocalStorage
from service.manifests import open_manifest_repository
from service.stores import open_job_store
from workers.attempts import liveness
from pipeline.settings import Settings, load_settings

WEB = Path(__file__).resolve().parent / "web"
MULTIPART_OVERHEAD = 64 * 1024


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers or {}


def _error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message, "status": status}}, status_code=status,
                        headers=headers)


class ErrorBody(BaseModel):
    code: str
    message: str
    status: int


class ErrorResponse(BaseModel):
    error: ErrorBody


ERRORS = {s: {"model": ErrorResponse} for s in (400, 401, 404, 409, 413, 422, 429, 503)}


class BodyLimit:
    """ASGI middleware: refuse an upload as soon as more than ``limit`` bytes have streamed in."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] != "POST":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            return await _error(413, "too_large", f"the request body is {int(declared)} bytes; the limit is "
                                f"{self.limit}")(scope, receive, send)
        seen = 0

        async def counted():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise ApiError(413, "too_large", f"the request body passed the {self.limit} byte limit")
            return message

        try:
            await self.app(scope, counted, send)
        except ApiError as exc:
            await _error(exc.status, exc.code, exc.message)(scope, receive, send)


OPEN_PATHS = ("/healthz",)  # never limited: liveness probes
# The manifest resolver (Durable Content Credentials): anyone holding a copy of a video may check
# it, so no key; read-only, and limited per client address like the other routes without a key.
PUBLIC_PREFIXES = ("/v1/credentials/",)


def _plain_key(headers: dict[bytes, bytes]) -> str | None:
    x_api_key = headers.get(b"x-api-key")
    if x_api_key:
        return x_api_key.decode("latin-1").strip()
    authorization = headers.get(b"authorization", b"").decode("latin-1")
    if authorization.lower().startswith("bearer "):
        return authorization[7:].strip() or None
    return None


class Gatekeeper:
    """ASGI middleware in front of every route, before a byte of the body is read.

    ``/v1/...``: the API key is checked (401 otherwise) and its per-key limit applied (429 with
    ``Retry-After``); the key row is handed to the route in ``scope["state"]["api_key"]``. Every
    other route (``/v1/credentials/...``, the public resolver, included), and every request with a
    missing or wrong key, counts against the client address's limit
    (``api.unauthenticated_rate_per_minute``). The limits live in Redis
    (service/ratelimit.py), shared by all API processes.
    """

    def __init__(self, app, settings: Settings, db_url: str, limiter, salt: str):
        self.app, self.settings, self.db_url, self.limiter, self.salt = app, settings, db_url, limiter, salt

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS:
            return await self.app(scope, receive, send)
        try:
            if scope["path"].startswith("/v1/") and not scope["path"].startswith(PUBLIC_PREFIXES):
                scope.setdefault("state", {})["api_key"] = await self._authenticate(scope)
            else:
                await self._limit_address(scope)
        except ApiError as exc:
            return await _error(exc.status, exc.code, exc.message, exc.headers)(scope, receive, send)
        except TransientError as exc:
            return await _error(503, exc.code, exc.message, {"Retry-After": "5"})(scope, receive, send)
        return await self.app(scope, receive, send)

    async def _limit_address(self, scope) -> None:
        from service.ratelimit import address_bucket

        address = (scope.get("client") or ("unknown", 0))[0]
        decision = await anyio.to_thread.run_sync(
            self.limiter.hit, address_bucket("ip", address, self.salt), self.settings.api.unauthenticated_rate_per_minute)
        if not decision.allowed:
            raise ApiError(429, "rate_limited", f"too many requests from this address; retry in "
                           f"{decision.retry_after_s} s", {"Retry-After": str(decision.retry_after_s)})

    async def _authenticate(self, scope):
        from service import db

        plain = _plain_key(dict(scope["headers"]))
        if not plain:
            await self._limit_address(scope)
            raise ApiError(401, "missing_api_key", "send your API key as 'Authorization: Bearer <key>'")
        key = await anyio.to_thread.run_sync(db.find_api_key, self.db_url, plain)
        if key is None:
            await self._limit_address(scope)  # guessing keys is limited like any anonymous caller
            raise ApiError(401, "invalid_api_key", "this API key is unknown or revoked")
        limit = key.rate_limit_per_minute or self.settings.api.rate_limit_per_minute
        decision = await anyio.to_thread.run_sync(self.limiter.hit, f"key:{key.id}", limit)
        if not decision.allowed:
            raise ApiError(429, "rate_limited", f"more than {limit} requests in a minute for this API key; "
                           f"retry in {decision.retry_after_s} s", {"Retry-After": str(decision.retry_after_s)})
        return key


def _inline_hashes(html: str, tag: str) -> list[str]:
    """CSP hashes of a page's inline <script>/<style> blocks: the page runs without 'unsafe-inline'."""
    blocks = re.findall(rf"<{tag}>(.*?)</{tag}>", html, flags=re.S)
    return [f"'sha256-{base64.b64encode(hashlib.sha256(b.encode()).digest()).decode()}'" for b in blocks]


class SecurityHeaders:
    """ASGI middleware: the headers a page and an API on the open internet should send."""

    def __init__(self, app, page_csp: str):
        self.app = app
        self.common = [(b"x-content-type-options", b"nosniff"), (b"x-frame-options", b"DENY"),
                       (b"referrer-policy", b"no-referrer"), (b"cross-origin-opener-policy", b"same-origin")]
        self.page_csp = page_csp.encode()
        self.api_csp = b"default-src 'none'; frame-ancestors 'none'"
        self.docs_csp = (b"default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
                         b"frame-ancestors 'none'")

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope["path"]
        csp = self.page_csp if path == "/" else self.docs_csp if path.startswith(("/docs", "/static/docs")) \
            else self.api_csp

        async def with_headers(message):
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"content-security-policy"]
                message["headers"] = headers + self.common + [(b"content-security-policy", csp)]
            await send(message)

        await self.app(scope, receive, with_headers)


class ShareRequest(BaseModel):
    ttl_hours: float | None = Field(None, gt=0, description="lifetime of the link; default from settings")


ReportReason = Literal["nudity", "violence", "hate", "harassment", "self_harm", "spam", "copyright", "other"]
REPORT_TEXT_MAX = 1000
VIEWER_COOKIE = "alive_viewer"


class ReportRequest(BaseModel):
    reason: ReportReason
    text: str | None = Field(None, max_length=REPORT_TEXT_MAX, description="stored as plain text, never rendered as HTML")


class ReviewRequest(BaseModel):
    decision: Literal["restore", "remove"] = Field(..., description="restore: visible again; remove: never served again")


KEPT_MESSAGE = ("the signed manifest (a few KB) stays in the manifest repository: it is the record of provenance "
                "that lets anyone check a copy of the video; DELETE with ?forget_credentials=true removes it too")
FORGOTTEN_MESSAGE = ("the signed manifest was removed from the manifest repository too: copies of the video can no "
                     "longer be traced to their Content Credentials")
NOTHING_KEPT_MESSAGE = "this animation had no signed manifest in the manifest repository"


class DeletedAnimation(BaseModel):
    id: str
    deleted: list[str] = Field(..., description="what was deleted")
    kept_manifests: list[str] = Field(..., description="credential ids whose signed manifest stays in the repository")
    forgotten_manifests: list[str] = Field(..., description="credential ids removed with ?forget_credentials=true")
    message: str = Field(..., description="what was kept and why")


_PATHLIKE = re.compile(r"(?:[A-Za-z]:)?(?:/[^\s/'\"`]+){2,}/?")


def public_error(error: dict[str, Any] | None) -> dict[str, Any] | None:
    """A job's error as a client sees it: no server paths, model ids or command-line hints."""
    if not error:
        return error
    code = error.get("code")
    message = str(error.get("message") or "")
    if code in ("model_unavailable", "model_load_failed"):
        message = "the model for this engine is not available on this server; try another engine or ask its operator"
    else:
        message = _PATHLIKE.sub("<path>", message)
        message = re.split(r"[;(]\s*(?:run|use|try)\s+`?alive\b|`alive ", message)[0].rstrip(" ;:,(")
    return {"code": code, "message": message, "type": error.get("type")}


class CachedMetrics:
    """/metrics queries the database at most once every ``ttl`` seconds, however often it is scraped."""

    def __init__(self, ttl: float):
        self.ttl, self.text, self.at, self.lock = ttl, "", float("-inf"), threading.Lock()

    def get(self, render) -> str:
        with self.lock:
            if time.monotonic() - self.at >= self.ttl:
                self.text, self.at = render(), time.monotonic()
            return self.text


def _reporter_hash(salt: str, what: str) -> str:
    return hmac.new(salt.encode(), what.encode(), hashlib.sha256).hexdigest()[:64]


def create_app(settings: Settings | None = None) -> FastAPI:
    from service import db
    from service.ratelimit import RateLimiter
    from workers.client import allowed_engines

    settings = settings or load_settings()
    if settings.jobs.store != "database":
        settings = settings.model_copy(update={"jobs": settings.jobs.model_copy(update={"store": "database"})})
    harden_data_dir(settings)
    url = db.database_url(settings)
    db.migrate(url)
    api = settings.api
    docs = api.docs
    app = FastAPI(title="alive", version=pipeline.__version__,
                  description="Animate a photo into a moderated, C2PA-labelled story video.",
                  docs_url=None, redoc_url=None, openapi_url="/openapi.json" if docs else None)
    salt = db.server_salt(url)
    limiter = RateLimiter(settings)
    page = (WEB / "index.html").read_text(encoding="utf-8")
    page_csp = ("default-src 'self'; img-src 'self' blob: data:; media-src 'self' blob:; "
                f"script-src {' '.join(_inline_hashes(page, 'script'))}; style-src {' '.join(_inline_hashes(page, 'style'))}; "
                "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
    app.state.settings, app.state.db_url, app.state.limiter = settings, url, limiter
    # Added innermost first: BodyLimit, then the Gatekeeper (auth + limits before the body is read),
    # CORS, trusted hosts, security headers outermost (every answer carries them, errors too).
    app.add_middleware(BodyLimit, limit=settings.intake.max_bytes + settings.intake.max_audio_bytes + MULTIPART_OVERHEAD)
    app.add_middleware(Gatekeeper, settings=settings, db_url=url, limiter=limiter, salt=salt)
    if api.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=api.cors_origins, allow_methods=["*"],
                           allow_headers=["*"])
    if not api.public_url:  # links are built from the Host header: accept only hosts we are
        app.add_middleware(TrustedHostMiddleware, allowed_hosts=api.trusted_hosts)
    app.add_middleware(SecurityHeaders, page_csp=page_csp)

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError):
        return _error(exc.status, exc.code, exc.message, exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        return _error(exc.status_code, "http_error", str(exc.detail))

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        parts = [f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()]
        return _error(422, "invalid_request", "; ".join(parts))

    @app.exception_handler(AliveError)
    async def _alive_error(request: Request, exc: AliveError):
        status = 413 if exc.code == "too_large" else 422 if isinstance(exc, (InputRejected, ConfigError)) \
            else 503 if isinstance(exc, TransientError) else 500
        return _error(status, exc.code, public_error({"code": exc.code, "message": exc.message})["message"])

    jobs = open_job_store(settings)
    manifests = open_manifest_repository(settings)
    app.state.manifests = manifests
    metrics_cache = CachedMetrics(api.metrics_cache_s)

    def api_key(request: Request):
        key = getattr(request.state, "api_key", None)
        if key is None:  # every /v1 route is behind the Gatekeeper; this is a second lock on the door
            raise ApiError(401, "missing_api_key", "send your API key as 'Authorization: Bearer <key>'")
        return key

    def owned_job(job_id: str, key) -> Any:
        try:
            Keys(job_id)
        except ValueError:
            raise ApiError(404, "not_found", f"no animation {job_id!r}") from None
        row = db.get_job(url, job_id)
        if row is None or row.api_key_id != key.id:
            raise ApiError(404, "not_found", f"no animation {job_id!r}")
        return row

    def base_url(request: Request) -> str:
        return (api.public_url or str(request.base_url)).rstrip("/")

    def view(job_id: str, request: Request, visibility: str | None = None) -> dict[str, Any]:
        record = jobs.load(job_id)
        base = base_url(request)
        live = liveness(record, settings)
        doc: dict[str, Any] = {
            "id": job_id,
            "status": live["status"],  # "stalled": a running stage whose heartbeat stopped
            "stage": record.stage,
            "progress": record.progress,
            "heartbeat_at": live["heartbeat_at"],
            "waiting_for": public_error(live["waiting_for"]) if live["waiting_for"] else None,
            "created_at": record.created_at,
            "updated_at": record.updated_at,
            "error": public_error(record.error),
            "moderation": {k: {"decision": v.get("decision"), "unchecked": v.get("unchecked", [])}
                           for k, v in record.moderation.items()},
            "engine": (record.engine or {}).get("engine") or record.engine_name,
            "status_url": f"{base}/v1/animations/{job_id}",
            "visibility": visibility or "visible",
        }
        if record.status == "succeeded":
            verification = record.c2pa.get("verification", {})
            doc["c2pa"] = {"state": verification.get("state"), "ai_generated": verification.get("ai_generated"),
                           "digital_source_type": verification.get("digital_source_type"),
                           "issuer": verification.get("signer"), "generator": verification.get("generator")}
            doc["links"] = {"video": f"{base}/v1/animations/{job_id}/video",
                            "poster": f"{base}/v1/animations/{job_id}/poster",
                            "preview": f"{base}/v1/animations/{job_id}/preview"}
            doc["video"] = {k: record.outputs.get(k) for k in ("width", "height", "fps", "frames", "duration_s")}
            doc["video"]["audio"] = (record.audio or {}).get("kind")
        return doc

    @app.get("/healthz", tags=["ops"])
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", tags=["ops"], responses=ERRORS)
    def readyz():
        from workers.client import broker_reachable

        problems = []
        if not db.ping(url):
            problems.append("database unreachable")
        if not broker_reachable(settings):
            problems.append("broker unreachable")
        if problems:
            raise ApiError(503, "not_ready", "; ".join(problems))
        return {"status": "ready"}

    @app.get("/metrics", tags=["ops"], response_class=PlainTextResponse, responses=ERRORS)
    def metrics(authorization: str | None = Header(None)) -> str:
        from service.metrics import render

        if api.metrics_token:
            given = authorization[7:].strip() if authorization and authorization.lower().startswith("bearer ") else ""
            if not hmac.compare_digest(given.encode(), api.metrics_token.encode()):
                raise ApiError(401, "metrics_token", "send the metrics token as 'Authorization: Bearer <token>'")
        return metrics_cache.get(lambda: render(url, settings))

    @app.post("/v1/animations", status_code=202, tags=["animations"],
              responses={200: {"description": "replay of an earlier request with the same Idempotency-Key"},
                         **ERRORS})
    def create_animation(
        request: Request,
        response: Response,
        image: UploadFile = File(..., description="JPEG, PNG or WebP photo"),
        # Optional form fields are typed without "| None": a form cannot send null, and the schema
        # must not claim it can (an omitted field is still None).
        engine: Literal["motion", "svd", "tiny"] = Form(None, description="engine; the server may offer only some"),
        seed: int = Form(None, ge=0, le=2**31 - 1),
        motion: int = Form(None, ge=0, le=1023, description="amount of motion"),
        motion_style: Literal["auto", "parallax", "sky", "still-camera"] = Form(
            None, description="motion engine: what moves (auto: what the photo holds)"),
        preset: Literal["tiktok", "reels", "shorts", "whatsapp-status"] = Form(None, description="platform preset"),
        fps: int = Form(None, ge=1, le=60, description="story frame rate (the clip is interpolated up to it)"),
        duration_s: float = Form(None, gt=0, le=60, description="story length in seconds, reached by looping"),
        loop: Literal["none", "pingpong", "crossfade"] = Form(None, description="how the clip loops"),
        language: str = Form(None, max_length=16, description="language of the visible label: en, id, es, pt, fr, de"),
        ambience: Literal["waves", "wind", "rain", "room"] = Form(None, description="procedural sound bed"),
        audio: UploadFile = File(None, description="sound file mixed in, trimmed and faded to the story"),
        prompt: str = Form(None, max_length=500),
        callback_url: str = Form(None, max_length=2000,
                                 description="webhook called when the job ends (public http(s) addresses only)"),
        idempotency_key: str | None = Header(None, max_length=128),
        key=Depends(api_key),
    ) -> dict[str, Any]:
        if idempotency_key:
            existing = db.find_by_idempotency(url, key.id, idempotency_key)
            if existing:
                response.status_code = 200
                return view(existing, request)
        limit = key.max_concurrent_jobs or api.max_concurrent_jobs
        if db.count_active_jobs(url, key.id) >= limit:  # cheap early answer; the real check is below
            raise _quota_error(limit)
        if callback_url is not None:
            from service.egress import check_callback_url

            check_callback_url(callback_url, settings)
        data = image.file.read(settings.intake.max_bytes + 1)
        if len(data) > settings.intake.max_bytes:
            raise ApiError(413, "too_large", f"the photo is larger than {settings.intake.max_bytes} bytes")
        options = GenerationOptions.build(seed=seed, motion_bucket_id=motion, motion_style=motion_style)
        story = StoryOptions.build(preset=preset, fps=fps, duration_s=duration_s, loop=loop, language=language,
                                   ambience=ambience)
        limit_audio = settings.intake.max_audio_bytes
        sound = audio.file.read(limit_audio + 1) if audio is not None else None
        if sound is not None and len(sound) > limit_audio:
            raise ApiError(413, "too_large", f"the sound file is larger than {limit_audio} bytes")
        from workers.client import submit

        def reserve(record) -> None:  # quota check and insert in one transaction
            try:
                db.insert_job_within_quota(url, record, api_key_id=key.id, limit=limit,
                                           idempotency_key=idempotency_key, callback_url=callback_url)
            except db.QuotaExceeded:
                raise _quota_error(limit) from None

        try:
            job_id = submit(data, settings, options, prompt=prompt, engine=engine, callback_url=callback_url,
                            story=story, audio=sound, reserve=reserve, engines=allowed_engines(settings))
        except db.IntegrityError:  # the same Idempotency-Key raced in from another request
            existing = db.find_by_idempotency(url, key.id, idempotency_key)
            response.status_code = 200
            return view(existing, request)
        response.headers["Location"] = f"/v1/animations/{job_id}"
        return view(job_id, request)

    @app.get("/v1/animations/{job_id}", tags=["animations"], responses=ERRORS)
    def get_animation(job_id: str, request: Request, key=Depends(api_key)) -> dict[str, Any]:
        row = owned_job(job_id, key)
        return view(job_id, request, row.visibility)

    def _file(job_id: str, which: str, media: str, visibility: str, request: Request):
        """A job's file: served from disk for a local store (Range included), else a 302 to a
        presigned URL of the object store (``api.download: redirect``) or streamed through here
        (``proxy``)."""
        if visibility == "removed":
            raise ApiError(410, "removed", "this video was removed after review")
        key = getattr(Keys(job_id), which)
        filename = f"{job_id}.{key.rsplit('.', 1)[-1]}"
        storage = jobs.storage
        if isinstance(storage, LocalStorage):
            path = storage.local_path(key)
            if not path.is_file():
                raise ApiError(409, "not_ready", f"the {which} of {job_id} is not ready (see its status)")
            return FileResponse(path, media_type=media, filename=filename)
        size = storage.size(key)
        if size is None:
            raise ApiError(409, "not_ready", f"the {which} of {job_id} is not ready (see its status)")
        if api.download == "redirect":
            target = storage.presigned_url(key, settings.storage.presign_ttl_s, filename=filename, content_type=media)
            if target:  # private: the URL is a bearer credential for ttl seconds, no cache may keep it
                return RedirectResponse(target, status_code=302, headers={"Cache-Control": "private, no-store"})
        return _stream(storage, key, size, media, filename, request.headers.get("range"))

    @app.get("/v1/animations/{job_id}/video", tags=["animations"], responses=ERRORS,
             response_class=FileResponse)
    def get_video(job_id: str, request: Request, key=Depends(api_key)):
        return _file(job_id, "video", "video/mp4", owned_job(job_id, key).visibility, request)

    @app.get("/v1/animations/{job_id}/poster", tags=["animations"], responses=ERRORS,
             response_class=FileResponse)
    def get_poster(job_id: str, request: Request, key=Depends(api_key)):
        return _file(job_id, "poster", "image/jpeg", owned_job(job_id, key).visibility, request)

    @app.get("/v1/animations/{job_id}/preview", tags=["animations"], responses=ERRORS,
             response_class=FileResponse)
    def get_preview(job_id: str, request: Request, key=Depends(api_key)):
        """A small looping animated WebP of the story, for feeds and thumbnails."""
        return _file(job_id, "preview", "image/webp", owned_job(job_id, key).visibility, request)

    @app.post("/v1/animations/{job_id}/share", status_code=201, tags=["animations"], responses=ERRORS)
    def share(job_id: str, request: Request, body: ShareRequest | None = None, key=Depends(api_key)):
        row = owned_job(job_id, key)
        if jobs.load(job_id).status != "succeeded":
            raise ApiError(409, "not_ready", "only a finished animation can be shared")
        if row.visibility != "visible":
            raise ApiError(409, row.visibility, f"this video is {row.visibility} after viewer reports; review it first")
        hours = (body.ttl_hours if body and body.ttl_hours else api.share_ttl_hours)
        if hours > api.share_ttl_max_hours:
            raise ApiError(422, "invalid_request", f"ttl_hours may be at most {api.share_ttl_max_hours}")
        token = secrets.token_urlsafe(24)
        expires = dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=hours)
        db.create_share(url, token, job_id, expires)
        return {"url": f"{base_url(request)}/s/{token}", "token": token, "expires_at": expires.isoformat()}

    @app.delete("/v1/animations/{job_id}/share/{token}", status_code=204, tags=["animations"], responses=ERRORS)
    def revoke_share(job_id: str, token: str, key=Depends(api_key)) -> Response:
        """Revoke one share link: it answers 404 from now on."""
        owned_job(job_id, key)
        if not db.revoke_share(url, job_id, token):
            raise ApiError(404, "not_found", "this animation has no such live share link")
        return Response(status_code=204)

    def _live_link(token: str):
        link = db.get_share(url, token)
        if link is None or link.revoked_at is not None:
            raise ApiError(404, "not_found", "no such share link")
        if link.expires_at <= dt.datetime.now(dt.timezone.utc):
            raise ApiError(410, "share_expired", "this share link has expired")
        return link

    @app.get("/s/{token}", tags=["public"], responses=ERRORS, response_class=FileResponse)
    def shared_video(token: str, request: Request):
        link = _live_link(token)
        row = db.get_job(url, link.job_id)
        if row.visibility == "hidden":
            raise ApiError(403, "hidden_pending_review", "this video was reported and is hidden pending review")
        return _file(link.job_id, "video", "video/mp4", row.visibility, request)

    @app.post("/s/{token}/reports", status_code=201, tags=["public"], responses=ERRORS)
    def viewer_report(token: str, body: ReportRequest, request: Request, response: Response) -> dict[str, Any]:
        """Anyone who was given the link may report the video (no API key). One report per viewer
        (client address, and a cookie) per video; `api.reports_to_hide` distinct viewers hide it
        pending the owner's review. Texts are stored as plain text."""
        from service.ratelimit import address_bucket

        link = _live_link(token)
        address = request.client.host if request.client else "unknown"
        decision = limiter.hit(address_bucket("report", address, salt), api.reports_per_address_per_hour, 3600)
        if not decision.allowed:
            raise ApiError(429, "rate_limited", f"too many reports from this address; retry in "
                           f"{decision.retry_after_s} s", {"Retry-After": str(decision.retry_after_s)})
        viewer = request.cookies.get(VIEWER_COOKIE)
        if not viewer or not re.fullmatch(r"[A-Za-z0-9_-]{16,64}", viewer):
            viewer = secrets.token_urlsafe(18)
            response.set_cookie(VIEWER_COOKIE, viewer, max_age=365 * 86400, httponly=True, samesite="strict",
                                secure=base_url(request).startswith("https://"), path="/s/")
        count, new, visibility = db.add_report(
            url, link.job_id, body.reason, body.text, reporter=_reporter_hash(salt, f"addr|{address}"),
            reporter_cookie=_reporter_hash(salt, f"cookie|{viewer}"), hide_at=api.reports_to_hide)
        if not new:
            response.status_code = 200
        return {"received": True, "duplicate": not new, "hidden": visibility != "visible"}

    @app.post("/v1/animations/{job_id}/reports", status_code=201, tags=["animations"], responses=ERRORS)
    def owner_report(job_id: str, body: ReportRequest, response: Response, key=Depends(api_key)) -> dict[str, Any]:
        """The owner's own report (counts as one reporter, like any viewer)."""
        owned_job(job_id, key)
        count, new, visibility = db.add_report(url, job_id, body.reason, body.text,
                                               reporter=_reporter_hash(salt, f"key|{key.id}"), reporter_cookie=None,
                                               hide_at=api.reports_to_hide)
        if not new:
            response.status_code = 200
        return {"reports": count, "duplicate": not new, "hidden": visibility != "visible"}

    @app.get("/v1/animations/{job_id}/reports", tags=["animations"], responses=ERRORS)
    def list_reports(job_id: str, key=Depends(api_key)) -> dict[str, Any]:
        row = owned_job(job_id, key)
        reports = [{"reason": r.reason, "text": r.text, "created_at": r.created_at.isoformat(), "reviewed": r.reviewed}
                   for r in db.list_reports(url, job_id)]
        return {"visibility": row.visibility, "open": sum(1 for r in reports if not r["reviewed"]), "reports": reports}

    @app.post("/v1/animations/{job_id}/review", tags=["animations"], responses=ERRORS)
    def review(job_id: str, body: ReviewRequest, key=Depends(api_key)) -> dict[str, Any]:
        """Settle the reports: `restore` makes the video visible again; `remove` deletes its files
        and revokes every share link (the job record and its C2PA summary stay)."""
        owned_job(job_id, key)
        visibility = db.review(url, job_id, body.decision)
        if visibility == "removed":
            k = Keys(job_id)
            for name in (k.video, k.poster, k.preview):
                jobs.storage.delete(name)
        return {"visibility": visibility}

    @app.post("/v1/webhook-secret", tags=["keys"], responses=ERRORS)
    def rotate_webhook_secret(key=Depends(api_key)) -> dict[str, str]:
        """A new webhook signing secret for this key, shown once; the old one stops at once."""
        secret = db.rotate_webhook_secret(url, key.id)
        if secret is None:
            raise ApiError(401, "invalid_api_key", "this API key is unknown or revoked")
        return {"webhook_secret": secret}

    @app.delete("/v1/animations/{job_id}", tags=["animations"], responses=ERRORS)
    def delete_animation(job_id: str, key=Depends(api_key), forget_credentials: bool = Query(
            False, description="also remove the signed manifest from the manifest repository (by default it "
                               "stays: it is what lets anyone check a copy of the video)")) -> DeletedAnimation:
        """Delete the job's files, its record, share links, reports and webhook log. The signed
        manifest (a few KB) stays in the manifest repository unless ``forget_credentials=true``."""
        owned_job(job_id, key)
        jobs.delete_job(job_id)
        ids = manifests.for_job(job_id)
        if forget_credentials:
            manifests.forget_job(job_id)
        message = NOTHING_KEPT_MESSAGE if not ids else FORGOTTEN_MESSAGE if forget_credentials else KEPT_MESSAGE
        return DeletedAnimation(id=job_id, deleted=["video", "poster", "preview", "job record", "share links",
                                                    "reports", "webhook deliveries"],
                                kept_manifests=[] if forget_credentials else ids,
                                forgotten_manifests=ids if forget_credentials else [], message=message)

    _mount_credentials(app, settings, manifests)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def index() -> str:
        return page

    if docs:
        _mount_docs(app)
    return app


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """The one byte range (first, last inclusive) a ``Range`` header asks of ``size`` bytes, or None for
    the whole object (no header, several ranges, or a header that does not parse: RFC 9110 lets a
    server ignore those). Raises ``ApiError`` 416 when the range lies wholly past the end."""
    match = re.fullmatch(r"\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*", header or "")
    if not match or match.group(1) == match.group(2) == "":
        return None
    first, last = match.group(1), match.group(2)
    if first == "":  # bytes=-n: the last n bytes
        if int(last) == 0 or size == 0:
            raise _unsatisfiable(size)
        return max(0, size - int(last)), size - 1
    start = int(first)
    if last != "" and int(last) < start:
        return None  # an invalid range-spec: ignored
    if start >= size:
        raise _unsatisfiable(size)
    return start, size - 1 if last == "" else min(int(last), size - 1)


def _unsatisfiable(size: int) -> ApiError:
    return ApiError(416, "range_not_satisfiable", f"the requested range is past the end ({size} bytes)",
                    {"Content-Range": f"bytes */{size}"})


def _stream(storage, key: str, size: int, media: str, filename: str, range_header: str | None) -> Response:
    """An object streamed from the store, whole (200) or one range (206), as a file would be served."""
    from pipeline.s3 import content_disposition

    wanted = parse_range(range_header, size)
    start, end = wanted if wanted else (0, size - 1)
    headers = {"Accept-Ranges": "bytes", "Content-Length": str(max(0, end - start + 1)),
               "Content-Disposition": content_disposition(filename), "Cache-Control": "private"}
    if wanted:
        headers["Content-Range"] = f"bytes {start}-{end}/{size}"
    chunks = storage.open_range(key, start, end) if size else iter(())
    return StreamingResponse(chunks, status_code=206 if wanted else 200, media_type=media, headers=headers)


def _quota_error(limit: int) -> ApiError:
    return ApiError(429, "too_many_jobs", f"this API key already has {limit} jobs queued or running; "
                    "wait for one to finish", {"Retry-After": "10"})


# ------------------------------------------------------------------------------------------------
# The manifest resolver: Durable Content Credentials, in the shape of the C2PA Soft Binding
# Resolution API (its OpenAPI: AdobeDocs/cai-soft-binding-api, c2pa-original-soft-binding.json),
# mounted under /v1/credentials. Public and read-only; limited per client address (Gatekeeper).

MAX_RESULTS = 100
DECODE_SLOTS = 2  # by-content decodes at once per API process: each keeps a core busy for seconds


def _errors(*statuses: int) -> dict[int, dict[str, Any]]:
    """The error replies a public route documents: its own, plus the Gatekeeper's 429 and 503."""
    return {s: {"model": ErrorResponse} for s in (*statuses, 429, 503)}


_SUFFIX = re.compile(r"\.[A-Za-z0-9]{1,5}")


class BindingQuery(BaseModel):
    alg: str = Field(..., max_length=100, description="soft binding algorithm, e.g. com.alive.watermark.1")
    value: str = Field(..., max_length=4096, description="base64 value of the soft binding, as in the manifest")


class SoftBindingMatch(BaseModel):
    manifestId: str = Field(..., description="the credential id: fetch it from /v1/credentials/manifests/{manifestId}")
    similarityScore: int = Field(..., ge=0, le=100, description="strength of the match, 0 (weakest) to 100")


class SoftBindingQueryResult(BaseModel):
    matches: list[SoftBindingMatch]


class AlgorithmName(BaseModel):
    alg: str


class SupportedAlgorithms(BaseModel):
    watermarks: list[AlgorithmName]
    fingerprints: list[AlgorithmName]


class ManifestSummary(BaseModel):
    manifest_id: str
    job_id: str
    created_at: str | None = Field(..., description="when the manifest was signed (UTC, ISO 8601)")
    digital_source_type: str | None
    source_type: str | None = Field(..., description="the IPTC name of the digital source type")
    ai_generated: bool = Field(..., description="whether the source type says a trained model made the media")
    title: str | None
    signer: str | None = Field(..., description="who signed it (the certificate's subject)")
    generator: str | None = Field(..., description="the claim generator: the software that made the video")
    manifest_label: str | None
    watermark_alg: str
    fingerprint_alg: str
    size_bytes: int
    manifest_url: str


def _matches(found: list[tuple[str, float]]) -> SoftBindingQueryResult:
    return SoftBindingQueryResult(matches=[SoftBindingMatch(manifestId=mid, similarityScore=round(100 * min(1.0, score)))
                                           for mid, score in found])


def _summary(manifest) -> ManifestSummary:
    from pipeline.provenance import is_ai_generated, source_type_name

    return ManifestSummary(
        manifest_id=manifest.manifest_id, job_id=manifest.job_id,
        created_at=manifest.created_at.isoformat() if manifest.created_at else None,
        digital_source_type=manifest.digital_source_type, source_type=source_type_name(manifest.digital_source_type),
        ai_generated=is_ai_generated(manifest.digital_source_type), title=manifest.title, signer=manifest.signer,
        generator=manifest.generator, manifest_label=manifest.manifest_label, watermark_alg=manifest.watermark_alg,
        fingerprint_alg=manifest.fingerprint_alg, size_bytes=len(manifest.manifest_store),
        manifest_url=f"/v1/credentials/manifests/{manifest.manifest_id}")


def _find_by_binding(repository, alg: str, value: str, limit: int) -> SoftBindingQueryResult:
    """A watermark value matches exactly (score 100); a fingerprint value by similarity; any other
    algorithm only exactly (no such binding is stored by alive, so: no matches)."""
    from pipeline import fingerprint, watermark
    from service.manifests import fingerprint_from_binding_value

    try:
        if alg == fingerprint.ALGORITHM:
            near = repository.by_fingerprint(fingerprint_from_binding_value(value), limit, alg=alg)
            return _matches([(m.manifest.manifest_id, m.similarity) for m in near])
        if alg == watermark.ALGORITHM:
            watermark.credential_id_from_value(value)  # refuses a value no watermark can carry
    except ValueError as exc:
        raise ApiError(400, "invalid_binding_value", str(exc)) from None
    return _matches([(m.manifest_id, 1.0) for m in repository.by_binding(alg, value, limit)])


async def _receive_upload(request: Request, limit: int) -> Path:
    """The uploaded file (multipart field ``file``, or the raw body) in a private temp file, at most
    ``limit`` bytes. The caller deletes it."""
    import os
    import tempfile

    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit + MULTIPART_OVERHEAD:  # refused before a byte is read
        raise ApiError(413, "too_large", f"the request body is {int(declared)} bytes; files up to {limit} bytes")
    content_type = request.headers.get("content-type", "")
    fd, name = tempfile.mkstemp(prefix="alive-lookup-")  # 0600
    os.close(fd)
    path = Path(name)
    try:
        if content_type.startswith("multipart/form-data"):
            path = await _copy_form_file(request, path, limit)
        else:
            await _copy_chunks(request.stream(), path, limit)
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    if path.stat().st_size == 0:
        path.unlink(missing_ok=True)
        raise ApiError(400, "empty_upload", "send the video or image as the multipart field 'file' or as the body")
    return path


async def _copy_form_file(request: Request, path: Path, limit: int) -> Path:
    from starlette.datastructures import UploadFile as StarletteUpload

    async with request.form(max_files=1, max_fields=10) as form:
        upload = form.get("file")
        if not isinstance(upload, StarletteUpload):
            raise ApiError(400, "missing_file", "send the video or image in the multipart field 'file'")
        suffix = Path(upload.filename or "").suffix
        if _SUFFIX.fullmatch(suffix):  # a hint for ffmpeg's probe; the content decides
            path = path.rename(path.with_name(path.name + suffix.lower()))

        async def chunks():
            while chunk := await upload.read(1 << 20):
                yield chunk

        await _copy_chunks(chunks(), path, limit)
    return path


async def _copy_chunks(chunks, path: Path, limit: int) -> None:
    seen = 0
    async with await anyio.open_file(path, "wb") as out:
        async for chunk in chunks:
            seen += len(chunk)
            if seen > limit:
                raise ApiError(413, "too_large", f"the file is larger than {limit} bytes")
            await out.write(chunk)


def _mount_credentials(app: FastAPI, settings: Settings, repository) -> None:
    """The public resolver's routes. Blocking work (the database; the by-content decode, capped at
    ``DECODE_SLOTS`` at once so a flood of uploads cannot take every worker thread) runs off the
    event loop."""
    from pipeline.softbinding import detectors

    decode_slots = anyio.CapacityLimiter(DECODE_SLOTS)
    readers = detectors(settings)  # other watermarks this server can read (TrustMark when pulled)
    upload_limit = settings.intake.max_bytes
    tags = ["credentials"]

    @app.get("/v1/credentials/matches/byBinding", tags=tags, responses=_errors(400, 422))
    def match_by_binding(alg: str = Query(..., max_length=100), value: str = Query(..., max_length=4096),
                         max_results: int = Query(10, alias="maxResults", ge=1, le=MAX_RESULTS)
                         ) -> SoftBindingQueryResult:
        """Manifests whose soft binding (the watermark's credential id, or a fingerprint) is ``value``."""
        return _find_by_binding(repository, alg, value, max_results)

    @app.post("/v1/credentials/matches/byBinding", tags=tags, responses=_errors(400, 413, 422))
    def match_by_large_binding(body: BindingQuery, max_results: int = Query(
            10, alias="maxResults", ge=1, le=MAX_RESULTS)) -> SoftBindingQueryResult:
        """The same as GET, for values too long for a URL (a fingerprint)."""
        return _find_by_binding(repository, body.alg, body.value, max_results)

    @app.post("/v1/credentials/matches/byContent", tags=tags, responses=_errors(400, 413, 415, 422),
              openapi_extra={"requestBody": {"required": True, "content": {
                  "multipart/form-data": {"schema": {"type": "object", "required": ["file"], "properties": {
                      "file": {"type": "string", "format": "binary"}}}},
                  "video/*": {"schema": {"type": "string", "format": "binary"}},
                  "image/*": {"schema": {"type": "string", "format": "binary"}}}}})
    async def match_by_content(request: Request, max_results: int = Query(
            10, alias="maxResults", ge=1, le=MAX_RESULTS)) -> SoftBindingQueryResult:
        """Upload a video (MP4, MOV, WebM ...) or an image: its watermark and fingerprint are read
        and looked up. A watermark counts only when the stored fingerprint agrees; without one the
        fingerprint alone is searched. The file is deleted when the answer is sent."""
        path = await _receive_upload(request, upload_limit)
        try:
            found = await anyio.to_thread.run_sync(_inspect_and_match, repository, path, max_results,
                                                   readers, limiter=decode_slots)
        except InputRejected as exc:
            if exc.code == "not_a_video":
                raise ApiError(415, exc.code, "this is not a video or image alive can read (MP4, MOV, WebM, "
                               "JPEG, PNG, WebP ...)") from None
            raise
        finally:
            path.unlink(missing_ok=True)
        return _matches([(m.manifest.manifest_id, m.similarity) for m in found])

    @app.get("/v1/credentials/manifests/{manifestId}", tags=tags, response_class=Response,
             responses={200: {"description": "the signed manifest store (or its summary with format=json)",
                              "content": {"application/c2pa": {"schema": {"type": "string", "format": "binary"}},
                                          "application/json": {"schema": ManifestSummary.model_json_schema()}}},
                        **_errors(400, 404, 422)})
    def get_manifest(manifestId: str, as_format: Literal["c2pa", "json"] = Query(  # noqa: N803 - the API's name
            "c2pa", alias="format", description="c2pa: the manifest store bytes (application/c2pa); json: a summary")):
        from service.manifests import is_credential_id

        manifest_id = manifestId.lower()
        if not is_credential_id(manifest_id):
            raise ApiError(400, "invalid_manifest_id", "a manifest id is a credential id: 12 hex digits")
        manifest = repository.get(manifest_id)
        if manifest is None:
            raise ApiError(404, "not_found", f"no manifest {manifest_id}")
        if as_format == "json":
            return JSONResponse(_summary(manifest).model_dump())
        return Response(manifest.manifest_store, media_type="application/c2pa",
                        headers={"Content-Disposition": f'attachment; filename="{manifest_id}.c2pa"'})

    @app.get("/v1/credentials/services/supportedAlgorithms", tags=tags, responses=_errors())
    def supported_algorithms() -> SupportedAlgorithms:
        from pipeline import fingerprint, watermark

        return SupportedAlgorithms(watermarks=[AlgorithmName(alg=alg) for alg in
                                               (watermark.ALGORITHM, *(r.ALGORITHM for r in readers))],
                                   fingerprints=[AlgorithmName(alg=fingerprint.ALGORITHM)])


def _inspect_and_match(repository, path: Path, limit: int, readers=()):
    """Decode the file's soft bindings and look them up (CPU-heavy: runs in a worker thread)."""
    from pipeline.softbinding import inspect_file, lookup

    return lookup(inspect_file(path, readers=readers), repository, limit)


DOCS_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>alive API</title><link rel="icon" href="data:,">
<link rel="stylesheet" href="/static/docs/swagger-ui.css"></head>
<body><div id="swagger-ui"></div>
<script src="/static/docs/swagger-ui-bundle.js"></script><script src="/docs/init.js"></script></body></html>
"""
DOCS_INIT = """window.ui = SwaggerUIBundle({url: "/openapi.json", dom_id: "#swagger-ui", deepLinking: true,
  presets: [SwaggerUIBundle.presets.apis, SwaggerUIBundle.SwaggerUIStandalonePreset], layout: "BaseLayout"});
"""


def _mount_docs(app: FastAPI) -> None:
    """Swagger UI from the ``swagger-ui-bundle`` package (Apache-2.0): nothing loads from a CDN, and
    no inline script runs (the page's CSP allows scripts from this server only)."""
    from fastapi.staticfiles import StaticFiles

    try:
        from swagger_ui_bundle import swagger_ui_path
    except ImportError:  # the docs page is optional; /openapi.json still works
        return
    app.mount("/static/docs", StaticFiles(directory=str(swagger_ui_path)), name="docs-static")

    @app.get("/docs", include_in_schema=False, response_class=HTMLResponse)
    def swagger() -> str:
        return DOCS_PAGE

    @app.get("/docs/init.js", include_in_schema=False)
    def swagger_init() -> Response:
        return Response(DOCS_INIT, media_type="text/javascript")


def harden_data_dir(settings: Settings, *, process_umask: bool = False) -> None:
    """Keep the data dir private to this user: its folder and a local store are 0700. With
    ``process_umask`` (the ``alive serve`` and ``alive worker`` processes) the umask becomes 077, so
    every file they and the workers and broker they start make (database, WAL, logs, store files,
    the broker's append-only file) is 0600 and every folder 0700."""
    import os

    if process_umask:
        os.umask(0o077)
    folders = [settings.data_dir]
    if settings.storage.backend == "local":  # an object store has no local folder to close
        folders.append(settings.store_root)
    for folder in folders:
        folder.mkdir(parents=True, exist_ok=True)
        folder.chmod(0o700)
