"""HTTP API for social-app backends: upload a photo, poll or get a webhook, fetch or share the video.

One error format everywhere: ``{"error": {"code": ..., "message": ..., "status": N}}``. Auth with
``Authorization: Bearer <key>`` or ``X-API-Key``; keys are stored hashed. Uploads are multipart, size
checked while the body streams in (never by fetching a URL: no SSRF). Jobs go through the same
Celery chain as ``alive submit``; their records live in the database the workers update.
"""

from __future__ import annotations

import datetime as dt
import secrets
import threading
import time
from collections import defaultdict, deque
from pathlib import Path
from typing import Any, Literal

from fastapi import Depends, FastAPI, File, Form, Header, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, PlainTextResponse, Response
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

import pipeline
from pipeline.engines import GenerationOptions
from pipeline.finish import StoryOptions
from pipeline.errors import AliveError, ConfigError, InputRejected, TransientError
from pipeline.jobs import Keys, open_job_store
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


class RateLimiter:
    """Sliding one-minute window per API key, in this process (run one API process per key shard)."""

    def __init__(self) -> None:
        self.hits: dict[int, deque[float]] = defaultdict(deque)
        self.lock = threading.Lock()

    def check(self, key_id: int, per_minute: int) -> None:
        now = time.monotonic()
        with self.lock:
            window = self.hits[key_id]
            while window and now - window[0] > 60:
                window.popleft()
            if len(window) >= per_minute:
                retry = max(1, int(60 - (now - window[0])) + 1)
                raise ApiError(429, "rate_limited", f"more than {per_minute} requests in a minute for this API key; "
                               f"retry in {retry} s", {"Retry-After": str(retry)})
            window.append(now)


class ShareRequest(BaseModel):
    ttl_hours: float | None = Field(None, gt=0, description="lifetime of the link; default from settings")


class ReportRequest(BaseModel):
    reason: Literal["nudity", "violence", "hate", "harassment", "self_harm", "spam", "copyright", "other"]
    text: str | None = Field(None, max_length=2000)


def create_app(settings: Settings | None = None) -> FastAPI:
    from service import db

    settings = settings or load_settings()
    if settings.jobs.store != "database":
        settings = settings.model_copy(update={"jobs": settings.jobs.model_copy(update={"store": "database"})})
    url = db.database_url(settings)
    db.migrate(url)
    app = FastAPI(title="alive", version=pipeline.__version__,
                  description="Animate a photo into a moderated, C2PA-labelled story video.")
    app.state.settings, app.state.db_url, app.state.limiter = settings, url, RateLimiter()
    app.add_middleware(BodyLimit, limit=settings.intake.max_bytes + MULTIPART_OVERHEAD)
    if settings.api.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=settings.api.cors_origins, allow_methods=["*"],
                           allow_headers=["*"])

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
        status = 422 if isinstance(exc, (InputRejected, ConfigError)) else 503 if isinstance(exc, TransientError) else 500
        return _error(status, exc.code, exc.message)

    jobs = open_job_store(settings)

    def api_key(request: Request, authorization: str | None = Header(None),
                x_api_key: str | None = Header(None)):
        plain = x_api_key or (authorization[7:].strip() if authorization and authorization.lower().startswith("bearer ")
                              else None)
        if not plain:
            raise ApiError(401, "missing_api_key", "send your API key as 'Authorization: Bearer <key>'")
        key = db.find_api_key(url, plain)
        if key is None:
            raise ApiError(401, "invalid_api_key", "this API key is unknown or revoked")
        request.app.state.limiter.check(key.id, key.rate_limit_per_minute or settings.api.rate_limit_per_minute)
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
        return (settings.api.public_url or str(request.base_url)).rstrip("/")

    def view(job_id: str, request: Request) -> dict[str, Any]:
        record = jobs.load(job_id)
        base = base_url(request)
        doc: dict[str, Any] = {
            "id": job_id,
            "status": record.status,
            "stage": record.stage,
            "progress": record.progress,
            "created_at": record.created_at,
            "updated_at": record.updated_at,
            "error": record.error,
            "moderation": {k: {"decision": v.get("decision"), "unchecked": v.get("unchecked", [])}
                           for k, v in record.moderation.items()},
            "engine": (record.engine or {}).get("engine") or record.engine_name,
            "status_url": f"{base}/v1/animations/{job_id}",
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

    @app.get("/metrics", tags=["ops"], response_class=PlainTextResponse)
    def metrics() -> str:
        from service.metrics import render

        return render(url, settings)

    @app.post("/v1/animations", status_code=202, tags=["animations"],
              responses={200: {"description": "replay of an earlier request with the same Idempotency-Key"},
                         **ERRORS})
    def create_animation(
        request: Request,
        response: Response,
        image: UploadFile = File(..., description="JPEG, PNG or WebP photo"),
        # Optional form fields are typed without "| None": a form cannot send null, and the schema
        # must not claim it can (an omitted field is still None).
        engine: Literal["motion", "svd", "tiny"] = Form(None, description="engine preset"),
        seed: int = Form(None, ge=0, le=2**31 - 1),
        motion: int = Form(None, ge=0, le=1023, description="amount of motion"),
        preset: Literal["tiktok", "reels", "shorts", "whatsapp-status"] = Form(None, description="platform preset"),
        fps: int = Form(None, ge=1, le=60, description="story frame rate (the clip is interpolated up to it)"),
        duration_s: float = Form(None, gt=0, le=60, description="story length in seconds, reached by looping"),
        loop: Literal["none", "pingpong", "crossfade"] = Form(None, description="how the clip loops"),
        language: str = Form(None, max_length=16, description="language of the visible AI label: en, id, ..."),
        ambience: Literal["waves", "wind", "rain", "room"] = Form(None, description="procedural sound bed"),
        audio: UploadFile = File(None, description="sound file mixed in, trimmed and faded to the story"),
        prompt: str = Form(None, max_length=500),
        callback_url: str = Form(None, max_length=2000, pattern=r"^https?://",
                                 description="webhook called when the job ends"),
        idempotency_key: str | None = Header(None, max_length=128),
        key=Depends(api_key),
    ) -> dict[str, Any]:
        if idempotency_key:
            existing = db.find_by_idempotency(url, key.id, idempotency_key)
            if existing:
                response.status_code = 200
                return view(existing, request)
        limit = key.max_concurrent_jobs or settings.api.max_concurrent_jobs
        if db.count_active_jobs(url, key.id) >= limit:
            raise ApiError(429, "too_many_jobs", f"this API key already has {limit} jobs queued or running; "
                           "wait for one to finish", {"Retry-After": "10"})
        data = image.file.read(settings.intake.max_bytes + 1)
        if len(data) > settings.intake.max_bytes:
            raise ApiError(413, "too_large", f"the photo is larger than {settings.intake.max_bytes} bytes")
        options = GenerationOptions.build(seed=seed, motion_bucket_id=motion)
        story = StoryOptions.build(preset=preset, fps=fps, duration_s=duration_s, loop=loop, language=language,
                                   ambience=ambience)
        limit_audio = settings.intake.max_audio_bytes
        sound = audio.file.read(limit_audio + 1) if audio is not None else None
        if sound is not None and len(sound) > limit_audio:
            raise ApiError(413, "too_large", f"the sound file is larger than {limit_audio} bytes")
        from workers.client import submit

        def attach(job_id: str) -> None:
            db.attach_job(url, job_id, api_key_id=key.id, idempotency_key=idempotency_key,
                          callback_url=callback_url)

        try:
            job_id = submit(data, settings, options, prompt=prompt, engine=engine, callback_url=callback_url,
                            story=story, audio=sound, on_created=attach)
        except db.IntegrityError:  # the same Idempotency-Key raced in from another request
            existing = db.find_by_idempotency(url, key.id, idempotency_key)
            response.status_code = 200
            return view(existing, request)
        response.headers["Location"] = f"/v1/animations/{job_id}"
        return view(job_id, request)

    @app.get("/v1/animations/{job_id}", tags=["animations"], responses=ERRORS)
    def get_animation(job_id: str, request: Request, key=Depends(api_key)) -> dict[str, Any]:
        owned_job(job_id, key)
        return view(job_id, request)

    def _file(job_id: str, which: str, media: str):
        path = jobs.storage.local_path(getattr(Keys(job_id), which))
        if not path.is_file():
            raise ApiError(409, "not_ready", f"the {which} of {job_id} is not ready (see its status)")
        return FileResponse(path, media_type=media, filename=f"{job_id}.{path.suffix.lstrip('.')}")

    @app.get("/v1/animations/{job_id}/video", tags=["animations"], responses=ERRORS,
             response_class=FileResponse)
    def get_video(job_id: str, key=Depends(api_key)):
        owned_job(job_id, key)
        return _file(job_id, "video", "video/mp4")

    @app.get("/v1/animations/{job_id}/poster", tags=["animations"], responses=ERRORS,
             response_class=FileResponse)
    def get_poster(job_id: str, key=Depends(api_key)):
        owned_job(job_id, key)
        return _file(job_id, "poster", "image/jpeg")

    @app.get("/v1/animations/{job_id}/preview", tags=["animations"], responses=ERRORS,
             response_class=FileResponse)
    def get_preview(job_id: str, key=Depends(api_key)):
        """A small looping animated WebP of the story, for feeds and thumbnails."""
        owned_job(job_id, key)
        return _file(job_id, "preview", "image/webp")

    @app.post("/v1/animations/{job_id}/share", status_code=201, tags=["animations"], responses=ERRORS)
    def share(job_id: str, request: Request, body: ShareRequest | None = None, key=Depends(api_key)):
        owned_job(job_id, key)
        if jobs.load(job_id).status != "succeeded":
            raise ApiError(409, "not_ready", "only a finished animation can be shared")
        hours = (body.ttl_hours if body and body.ttl_hours else settings.api.share_ttl_hours)
        if hours > settings.api.share_ttl_max_hours:
            raise ApiError(422, "invalid_request", f"ttl_hours may be at most {settings.api.share_ttl_max_hours}")
        token = secrets.token_urlsafe(24)
        expires = dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=hours)
        db.create_share(url, token, job_id, expires)
        return {"url": f"{base_url(request)}/s/{token}", "token": token, "expires_at": expires.isoformat()}

    @app.get("/s/{token}", tags=["public"], responses=ERRORS, response_class=FileResponse)
    def shared_video(token: str):
        link = db.get_share(url, token)
        if link is None:
            raise ApiError(404, "not_found", "no such share link")
        if link.expires_at.replace(tzinfo=link.expires_at.tzinfo or dt.timezone.utc) <= dt.datetime.now(dt.timezone.utc):
            raise ApiError(410, "share_expired", "this share link has expired")
        if db.count_reports(url, link.job_id) >= settings.api.reports_to_hide:
            raise ApiError(403, "hidden_pending_review", "this video was reported and is hidden pending review")
        return _file(link.job_id, "video", "video/mp4")

    @app.delete("/v1/animations/{job_id}", status_code=204, tags=["animations"], responses=ERRORS)
    def delete_animation(job_id: str, key=Depends(api_key)) -> Response:
        owned_job(job_id, key)
        jobs.delete_job(job_id)
        return Response(status_code=204)

    @app.post("/v1/animations/{job_id}/reports", status_code=201, tags=["animations"], responses=ERRORS)
    def report(job_id: str, body: ReportRequest, key=Depends(api_key)) -> dict[str, Any]:
        owned_job(job_id, key)
        count = db.add_report(url, job_id, body.reason, body.text)
        return {"reports": count, "hidden": count >= settings.api.reports_to_hide}

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def page() -> str:
        return (WEB / "index.html").read_text(encoding="utf-8")

    return app
