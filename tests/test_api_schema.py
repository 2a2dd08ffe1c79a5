"""The API's OpenAPI document is valid and complete, and no request built from it gets a 5xx.

Schemathesis reads ``/openapi.json`` from the app and generates requests from it, sent in-process
through ASGI. Every request carries a valid API key (with a rate limit nobody reaches), so the
generated data gets past authentication and into the handlers. Jobs only need the broker to be
queued: one worker runs once, at the start, to make a finished animation and a share link, so the
paths that serve a real video are fuzzed too; then it stops and every later job stays queued.

The schema is loaded inside a fixture and each operation is driven by Hypothesis directly
(``operation.as_strategy``): schemathesis 4.32.5's ``pytest.from_fixture`` breaks under pytest 9
(``'Function' object has no attribute '_nodeid'``), and loading the schema at import time would
start a broker during collection.
"""

from __future__ import annotations

import time
from types import SimpleNamespace

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.worker_fixtures import WorkerEnv
from tests.deadlines import scaled
from tests.worker_fixtures import REPO

pytestmark = pytest.mark.slow

# Every operation the document must list (a new endpoint has to be added here, and so gets fuzzed).
OPERATIONS = [
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("GET", "/metrics"),
    ("POST", "/v1/animations"),
    ("GET", "/v1/animations/{job_id}"),
    ("DELETE", "/v1/animations/{job_id}"),
    ("GET", "/v1/animations/{job_id}/video"),
    ("GET", "/v1/animations/{job_id}/poster"),
    ("GET", "/v1/animations/{job_id}/preview"),
    ("POST", "/v1/animations/{job_id}/share"),
    ("POST", "/v1/animations/{job_id}/reports"),
    ("GET", "/v1/animations/{job_id}/reports"),
    ("POST", "/v1/animations/{job_id}/review"),
    ("DELETE", "/v1/animations/{job_id}/share/{token}"),
    ("POST", "/v1/webhook-secret"),
    ("GET", "/s/{token}"),
    ("POST", "/s/{token}/reports"),
    ("GET", "/v1/credentials/matches/byBinding"),
    ("POST", "/v1/credentials/matches/byBinding"),
    ("POST", "/v1/credentials/matches/byContent"),
    ("GET", "/v1/credentials/manifests/{manifestId}"),
    ("GET", "/v1/credentials/services/supportedAlgorithms"),
]
# Negative (schema-invalid) data only where there is a body: the other operations have nothing but
# free-form path strings and the pinned key headers, so no invalid request can be made for them.
RANDOM = [(m, p, GenerationMode.POSITIVE) for m, p in OPERATIONS] + [
    (m, p, GenerationMode.NEGATIVE) for m, p in OPERATIONS if m == "POST" and p != "/v1/webhook-secret"]  # no body
# On a real job of this key: a queued one and the finished one. DELETE gets a fresh queued job per
# example (the finished one is shared by the other tests).
ON_A_JOB = [(m, p, job) for m, p in OPERATIONS if "{job_id}" in p for job in ("queued", "succeeded")
            if not (m == "DELETE" and job == "succeeded")
            and not p.endswith(("/review", "/share/{token}"))]  # a "remove" would take the shared video away
EXAMPLES = 25
# not_a_server_error is the point; the conformance checks pass today and keep the document honest.
# positive_data_acceptance is left out: some bounds come from settings (e.g. api.share_ttl_max_hours)
# and cannot be in the static schema, so a schema-valid value may rightly get 422.
CHECKS = [not_a_server_error, response_schema_conformance, content_type_conformance, response_headers_conformance,
          status_code_conformance]
FUZZ = settings(max_examples=EXAMPLES, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large])


@pytest.fixture(scope="module")
def service(tmp_path_factory, data_dir, sample_photo):
    from service import db
    from service.api import create_app
    from workers.client import connect

    env = WorkerEnv(tmp_path_factory.mktemp("api-schema") / "d", data_dir / "models", ALIVE_JOBS__STORE="database")
    try:
        connect(env.settings)
        # public_url set: links never come from the Host header, so schemathesis' own host is fine
        app = create_app(env.settings.model_copy(update={"api": env.settings.api.model_copy(
            update={"public_url": "http://localhost", "unauthenticated_rate_per_minute": 10**9})}))
        url = db.database_url(env.settings)
        _, key = db.create_api_key(url, "schemathesis", rate_limit_per_minute=10**9, max_concurrent_jobs=10**9)
        client = TestClient(app, base_url="http://localhost")
        client.headers["Authorization"] = f"Bearer {key}"

        def post_photo() -> str:
            reply = client.post("/v1/animations", files={"image": ("p.jpg", sample_photo.read_bytes(), "image/jpeg")},
                                data={"engine": "tiny", "duration_s": "0.3", "seed": "1"})
            assert reply.status_code == 202, reply.text
            return reply.json()["id"]

        worker = env.start_worker("cpu,gpu")
        done = post_photo()
        deadline = time.monotonic() + scaled(120)
        while (status := client.get(f"/v1/animations/{done}").json()["status"]) in ("queued", "running"):
            assert time.monotonic() < deadline, f"job {done} still {status}"
            time.sleep(0.2)
        assert status == "succeeded", client.get(f"/v1/animations/{done}").json()
        env.stop_worker(worker)  # from here on every job stays queued
        token = client.post(f"/v1/animations/{done}/share", json={"ttl_hours": 1}).json()["token"]
        yield SimpleNamespace(app=app, key=key, client=client, post_photo=post_photo, succeeded=done,
                              queued=post_photo(), token=token)
    finally:
        env.close()
        db.dispose_engines()


@pytest.fixture(scope="module")
def api_schema(service):
    return schemathesis.openapi.from_asgi("/openapi.json", service.app)


def _auth(operation, key: str) -> dict[str, str] | None:
    """Pin both documented credential headers to the valid key (X-API-Key wins over Authorization)."""
    names = {p.name.lower() for p in operation.headers}
    pinned = {name: value for name, value in (("authorization", f"Bearer {key}"), ("x-api-key", key)) if name in names}
    return pinned or None


def _fuzz(operation, strategy, before_call=None) -> None:
    @FUZZ
    @given(case=strategy)
    def run(case):
        if before_call is not None:
            before_call(case)
        case.call_and_validate(checks=CHECKS)

    run()


def test_openapi_document_is_valid_and_lists_every_operation(service, api_schema):
    api_schema.validate()  # raises on any violation of the OpenAPI 3.1 meta-schema
    raw = api_schema.raw_schema
    assert raw["openapi"].startswith("3.1") and raw["info"]["title"] == "alive"
    listed = sorted((op.ok().method.upper(), op.ok().path) for op in api_schema.get_all_operations())
    assert listed == sorted(OPERATIONS)
    error_ref = raw["components"]["schemas"]["ErrorResponse"]
    assert set(error_ref["properties"]) == {"error"}
    for method, path in OPERATIONS:
        operation = raw["paths"][path][method.lower()]
        params = {p["name"] for p in operation.get("parameters", [])}
        if "authorization" in params:  # an authenticated operation documents the auth and error replies
            assert {"401", "404", "429"} <= set(operation["responses"]), (method, path)
    upload = raw["paths"]["/v1/animations"]["post"]["requestBody"]["content"]
    assert list(upload) == ["multipart/form-data"]
    assert "/" not in raw["paths"], "the web page is not an API operation"
    assert service.client.get("/openapi.json").json() == raw


@pytest.mark.parametrize("method,path,mode", RANDOM, ids=[f"{m} {p} {g.value}" for m, p, g in RANDOM])
def test_no_generated_request_gets_a_server_error(service, api_schema, method, path, mode):
    """Random (mostly unknown) ids, bodies and headers: every reply is a documented 2xx/4xx."""
    operation = api_schema[path][method]
    _fuzz(operation, operation.as_strategy(mode, headers=_auth(operation, service.key)))


def test_no_server_error_on_a_real_share_link(service, api_schema):
    """Runs before the job tests below, whose abuse reports hide the video behind its links (403)."""
    assert service.client.get(f"/s/{service.token}").status_code == 200
    operation = api_schema["/s/{token}"]["GET"]
    _fuzz(operation, operation.as_strategy(path_parameters={"token": service.token}))


@pytest.mark.parametrize("method,path,job", ON_A_JOB, ids=[f"{m} {p} {j}" for m, p, j in ON_A_JOB])
def test_no_server_error_on_a_real_job(service, api_schema, method, path, job):
    """The same, with the path pointing at a real job of this key, so the handlers get past the 404."""
    operation = api_schema[path][method]

    def fresh_job(case):  # each DELETE needs a job of its own
        case.path_parameters = {**(case.path_parameters or {}), "job_id": service.post_photo()}

    _fuzz(operation,
          operation.as_strategy(path_parameters={"job_id": getattr(service, job)}, headers=_auth(operation, service.key)),
          before_call=fresh_job if method == "DELETE" else None)


def test_idempotent_replay_status_is_documented(service, api_schema):
    responses = api_schema.raw_schema["paths"]["/v1/animations"]["post"]["responses"]
    photo = (REPO / "examples" / "astronaut.jpg").read_bytes()
    first = service.client.post("/v1/animations", headers={"Idempotency-Key": "schema-replay"},
                                files={"image": ("p.jpg", photo, "image/jpeg")}, data={"engine": "tiny"})
    again = service.client.post("/v1/animations", headers={"Idempotency-Key": "schema-replay"},
                                files={"image": ("p.jpg", photo, "image/jpeg")}, data={"engine": "tiny"})
    assert (first.status_code, again.status_code) == (202, 200)
    assert "200" in responses


def test_documented_form_values_are_accepted(service, api_schema):
    form = api_schema.raw_schema["components"]["schemas"]
    body = next(v for k, v in form.items() if k.startswith("Body_create_animation"))
    nullable = sorted(name for name, prop in body["properties"].items()
                      if {"type": "null"} in prop.get("anyOf", []))
    reply = service.client.post("/v1/animations", files={"image": ("p.jpg", b"x", "image/jpeg")},
                                data={name: "null" for name in nullable})
    assert not nullable or reply.status_code == 202, (nullable, reply.json())
