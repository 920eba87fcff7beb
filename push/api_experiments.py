"""Experiment endpoints (admin API key): the document, and each experiment's results.

- ``GET /v1/experiments``: the experiments in force, normalized, with their version and each
  one's revision.
- ``PUT /v1/experiments``: replace them (YAML or JSON, docs/EXPERIMENTS.md); a bad document is
  refused whole, ``400 bad_experiments`` with its line and reason, and the running ones stay.
- ``GET /v1/experiments/{name}``: per variant users, impressions, clicks, click-through rate with
  its 95 % interval, and the comparison with the control (:mod:`streams.experiment_stats`). An
  experiment that no longer runs reports its last revision; ``?revision=`` picks another.
"""

from __future__ import annotations

import re

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from push.exceptions import HTTPProblem
from push.http import read_body, require_admin
from push.runtime import Runtime
from streams.experiment_stats import report
from streams.experiments import (
    MAX_TEXT_BYTES,
    ExperimentSet,
    InvalidExperiments,
    parse_experiments,
)

SOURCE = "experiments.yaml"  # how errors name the body: ``experiments.yaml:12: …``
_REVISION = re.compile(r"[0-9a-f]{8}")


def _answer(experiments: ExperimentSet) -> JSONResponse:
    listed = [{**e.to_dict(), "revision": e.revision} for e in experiments]
    return JSONResponse({"version": experiments.version, "experiments": listed})


async def get_experiments(request: Request) -> Response:
    """The experiments in force on this node, with their version (0: none ever stored)."""
    runtime: Runtime = request.app.state.runtime
    require_admin(request, runtime, surface="experiments")
    return _answer(runtime.experiments.current)


async def put_experiments(request: Request) -> Response:
    """Replace the experiments: 200 with the normalized document and its version; 400
    ``bad_experiments`` with ``line`` (null when the error has none) when anything is wrong."""
    runtime: Runtime = request.app.state.runtime
    require_admin(request, runtime, surface="experiments")
    body = await read_body(request, min(runtime.settings.max_body_bytes, MAX_TEXT_BYTES))
    try:
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidExperiments(SOURCE, None, "the body must be UTF-8 text") from None
        experiments = parse_experiments(text, source=SOURCE)
    except InvalidExperiments as exc:
        runtime.metrics.experiments_reloads.labels("api", "invalid").inc()
        runtime.metrics.http_errors.labels("400", "bad_experiments").inc()
        return JSONResponse(
            {"error": "bad_experiments", "message": str(exc), "line": exc.line}, status_code=400
        )
    return _answer(await runtime.experiments.save(experiments, source="api"))


async def get_experiment(request: Request) -> Response:
    """One experiment's results (404 ``unknown_experiment`` when it never ran or counted)."""
    runtime: Runtime = request.app.state.runtime
    require_admin(request, runtime, surface="experiments")
    name = request.path_params["name"]
    running = runtime.experiments.current.get(name)
    revision = request.query_params.get("revision")
    stats = runtime.experiment_stats
    if revision is not None:
        if not _REVISION.fullmatch(revision):
            raise HTTPProblem(400, "bad_revision", "revision must be 8 hex digits")
        found = await stats.revision(name, revision)
        if found is None:
            raise HTTPProblem(404, "unknown_revision", "no such revision of this experiment")
        counts, others = found
        current = running if running is not None and running.revision == revision else None
        return JSONResponse(report(name, revision, current, counts, others))
    result = await stats.read(running, name)
    if result is None:
        raise HTTPProblem(404, "unknown_experiment", "no experiment of that name ran or counted")
    return JSONResponse(result)
