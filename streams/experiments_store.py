"""Experiments shared by every node (:mod:`streams.docstore`): ``pr:experiments`` in Redis,
announced on the ``pr:experiments`` channel, fed by the optional experiments file
(``PUSHREC_EXPERIMENTS_FILE``)."""

from __future__ import annotations

from streams.docstore import DocumentKind
from streams.experiments import NO_EXPERIMENTS, ExperimentSet, parse_experiments

EXPERIMENTS_KEY = "pr:experiments"
EXPERIMENTS_CHANNEL = "pr:experiments"

EXPERIMENTS: DocumentKind[ExperimentSet] = DocumentKind(
    name="experiments",
    key=EXPERIMENTS_KEY,
    channel=EXPERIMENTS_CHANNEL,
    parse=lambda text, source: parse_experiments(text, source=source),
    with_version=ExperimentSet.with_version,
    empty=NO_EXPERIMENTS,
)
