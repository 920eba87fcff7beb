"""A/B experiments: a typed model, a strict validator with line numbers, deterministic assignment.

An experiment splits users between variants; a variant picks an algorithm (a named set of
scoring weights) and/or overrides single parameters of the engine. The document schema is in
``docs/EXPERIMENTS.md``; the statistics are in :mod:`streams.experiment_stats`.

Guarantees:

- **Deterministic assignment.** A user's variant is a pure function of the user id, the
  experiment's ``salt`` (its name unless given) and its traffic and weights: the same on every
  node, after every restart, with no state stored. Changing weights or traffic moves only the
  users whose point changes hands; a new ``salt`` deals everyone again; parameters and
  algorithms leave every assignment as it was.
- **Revisions.** Each experiment has a revision, a hash of its whole definition. Statistics are
  kept per revision, so a changed experiment starts counting afresh instead of mixing lists made
  by two definitions.
- **No conflicts.** Two experiments of one feed may run at once (a user can be in both: a
  factorial design) only when they set different parameters; otherwise the document is refused,
  naming both.
- :func:`parse_experiments` returns an :class:`ExperimentSet` or raises
  :class:`InvalidExperiments` naming the line and the reason; nothing of the text is evaluated.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, fields, replace
from typing import Any

import yaml

from streams.profile import ScoringTuning
from streams.recommender import RecommenderTuning
from streams.yamldoc import DocumentReader, InvalidDocument, is_null, line_of

MAX_TEXT_BYTES = 64 * 1024
MAX_EXPERIMENTS = 20
MAX_VARIANTS = 10
#: The feeds an experiment may split (the computed ones).
EXPERIMENT_FEEDS: tuple[str, ...] = ("home",)
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,47}")

#: The parameters a variant may set: (low, high) per name. Scoring weights and sizes of
#: :class:`ScoringTuning`, and the per-category cap of :class:`RecommenderTuning`.
PARAMS: dict[str, tuple[float, float]] = {
    "neighbour_w": (0, 100),
    "recency_decay": (0, 1),
    "category_w": (0, 100),
    "global_w": (0, 100),
    "session_w": (0, 100),
    "repeat_w": (0, 100),
    "model_w": (0, 100),
    "neighbours_fetched": (1, 100),
    "trending_fetched": (1, 100),
    "recent_fetched": (1, 20),
    "session_items": (1, 50),
    "session_neighbours": (1, 500),
    "session_seq": (1, 50),
    "session_sample": (1, 1000),
    "session_position_decay": (0.1, 100),
    "session_item_decay": (0.1, 100),
    "max_per_category": (0, 100),
}
_FEED_PARAMS = frozenset({"max_per_category"})
_INT_PARAMS = (
    frozenset(
        f.name for f in fields(ScoringTuning) if isinstance(f.default, int) and f.name in PARAMS
    )
    | _FEED_PARAMS
)

#: Named algorithms: each is a set of parameters over the engine's defaults. ``engine`` is the
#: full real-time engine; the others are the baselines of docs/relevance.md, run live.
ALGORITHMS: dict[str, dict[str, float]] = {
    "engine": {},
    "popular": {
        "neighbour_w": 0,
        "category_w": 0,
        "session_w": 0,
        "model_w": 0,
        "repeat_w": 0,
        "global_w": 1,
    },
    "covisit": {"category_w": 0, "session_w": 0, "model_w": 0},
    "session_knn": {"neighbour_w": 0, "category_w": 0, "model_w": 0},
}
_EXPERIMENT_KEYS = ("name", "feed", "traffic", "salt", "variants")
_VARIANT_KEYS = ("name", "weight", "algorithm", "params")


class InvalidExperiments(InvalidDocument):
    """Experiments failed validation: ``line`` (1-based, None when unknown) and ``reason``."""


@dataclass(frozen=True, slots=True)
class Variant:
    """One arm of an experiment."""

    name: str
    weight: float
    algorithm: str = "engine"
    #: Overrides, sorted by name (on top of the algorithm's).
    params: tuple[tuple[str, float], ...] = ()

    def settings(self) -> dict[str, float]:
        """Every parameter this variant sets: the algorithm's, then its own overrides."""
        return {**ALGORITHMS[self.algorithm], **dict(self.params)}

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "weight": self.weight}
        if self.algorithm != "engine":
            out["algorithm"] = self.algorithm
        if self.params:
            out["params"] = dict(self.params)
        return out


@dataclass(frozen=True, slots=True)
class Experiment:
    """A split of one feed's users between variants."""

    name: str
    variants: tuple[Variant, ...]
    feed: str = "home"
    #: The share of users in the experiment (the others get the configured engine, unlabelled).
    traffic: float = 1.0
    #: What the assignment hashes with the user id ("" = the name).
    salt: str = ""

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "feed": self.feed, "traffic": self.traffic}
        if self.salt:
            out["salt"] = self.salt
        out["variants"] = [v.to_dict() for v in self.variants]
        return out

    @property
    def revision(self) -> str:
        """8 hex digits of a hash of the whole definition: any change makes a new revision."""
        body = json.dumps(self.to_dict(), separators=(",", ":"), sort_keys=True)
        return hashlib.sha256(body.encode()).hexdigest()[:8]

    @property
    def control(self) -> Variant:
        """The variant the others are compared with: ``control`` if named so, else the first."""
        return next((v for v in self.variants if v.name == "control"), self.variants[0])

    def bucket(self, user: str) -> float:
        """The user's point in [0, 1) for this experiment (a hash of salt and user id)."""
        digest = hashlib.sha256(f"{self.salt or self.name}\x1f{user}".encode()).digest()
        return int.from_bytes(digest[:8], "big") / 2**64

    def variant_for(self, user: str) -> Variant | None:
        """The user's variant, or None when the user is outside the experiment's traffic."""
        point = self.bucket(user)
        if point >= self.traffic:
            return None
        # The same point, rescaled to the enrolled share, walks the cumulative weights: users
        # keep their variant when the traffic grows (the enrolled ones keep their points).
        at = point / self.traffic * sum(v.weight for v in self.variants)
        for variant in self.variants:
            at -= variant.weight
            if at < 0:
                return variant
        return self.variants[-1]  # float rounding at the very top


@dataclass(frozen=True, slots=True)
class Label:
    """One experiment's part in a list's tag: which revision, which variant."""

    experiment: str
    revision: str
    variant: str

    def __str__(self) -> str:
        return f"{self.experiment}:{self.revision}:{self.variant}"


def labels_of(tag: str) -> list[Label] | None:
    """The labels of a list's tag (``exp:rev:variant,…``); None when it is not well formed."""
    out: list[Label] = []
    for part in tag.split(","):
        bits = part.split(":")
        if len(bits) != 3 or not all(bits):
            return None
        out.append(Label(*bits))
    return out


@dataclass(frozen=True, slots=True)
class Arm:
    """What one combination of variants runs: the tunings, and the tag its lists carry."""

    tag: str
    scoring: ScoringTuning
    feed: RecommenderTuning


class ExperimentSet:
    """A validated, immutable set of experiments and its version (0: never stored)."""

    __slots__ = ("_arms", "experiments", "version")

    def __init__(self, experiments: Sequence[Experiment] = (), version: int = 0) -> None:
        self.experiments = tuple(experiments)
        self.version = version
        self._arms: dict[tuple[ScoringTuning, RecommenderTuning, str], Arm] = {}

    def get(self, name: str) -> Experiment | None:
        """The running experiment called ``name``, if any."""
        return next((e for e in self.experiments if e.name == name), None)

    def assign(self, user: str, feed: str = "home") -> list[tuple[Experiment, Variant]]:
        """The experiments of ``feed`` the user is in, each with the user's variant."""
        out = []
        for experiment in self.experiments:
            if experiment.feed == feed:
                variant = experiment.variant_for(user)
                if variant is not None:
                    out.append((experiment, variant))
        return out

    def arm(self, user: str, scoring: ScoringTuning, feed_tuning: RecommenderTuning) -> Arm | None:
        """The tunings ``user``'s home feed is computed with, over the given defaults; None when
        the user is in no experiment (the defaults, untagged). Cached per combination."""
        if not self.experiments:
            return None
        chosen = self.assign(user)
        if not chosen:
            return None
        tag = ",".join(str(Label(e.name, e.revision, v.name)) for e, v in chosen)
        key = (scoring, feed_tuning, tag)
        found = self._arms.get(key)
        if found is None:
            found = _build_arm(tag, [v for _, v in chosen], scoring, feed_tuning)
            self._arms[key] = found
        return found

    def with_version(self, version: int) -> ExperimentSet:
        return ExperimentSet(self.experiments, version)

    def to_dict(self) -> dict[str, Any]:
        """The normalized document ``{"experiments": [...]}``."""
        return {"experiments": [e.to_dict() for e in self.experiments]}

    def body(self) -> str:
        """The normalized document as compact JSON (what is stored)."""
        return json.dumps(self.to_dict(), separators=(",", ":"), ensure_ascii=False)

    def __len__(self) -> int:
        return len(self.experiments)

    def __iter__(self) -> Iterator[Experiment]:
        return iter(self.experiments)


NO_EXPERIMENTS = ExperimentSet()


def _build_arm(
    tag: str, variants: Sequence[Variant], scoring: ScoringTuning, feed: RecommenderTuning
) -> Arm:
    settings: dict[str, float] = {}
    for variant in variants:  # validation made their parameter sets disjoint
        settings.update(variant.settings())
    score_changes = {
        k: (int(v) if k in _INT_PARAMS else float(v))
        for k, v in settings.items()
        if k not in _FEED_PARAMS
    }
    new_scoring = replace(scoring, **score_changes)  # type: ignore[arg-type]
    new_feed = feed
    if "max_per_category" in settings:
        new_feed = replace(new_feed, max_per_category=int(settings["max_per_category"]))
    if "repeat_w" in settings:  # the recommender's repeat slot follows the script's
        new_feed = replace(new_feed, repeat=new_scoring.repeat_w > 0)
    return Arm(tag, new_scoring, new_feed)


# -- validation --------------------------------------------------------------------------------


def parse_experiments(text: str, *, source: str = "experiments.yaml") -> ExperimentSet:
    """Validate an experiments document (YAML, or JSON) into an :class:`ExperimentSet`.

    Raises :class:`InvalidExperiments` at the first error, naming ``source``, the line and the
    reason.
    """
    return _Parser(source).read(text, NO_EXPERIMENTS)


class _Parser(DocumentReader[ExperimentSet]):
    error = InvalidExperiments
    noun = "experiments"

    def __init__(self, source: str) -> None:
        super().__init__(source, MAX_TEXT_BYTES)

    def document(self, root: yaml.Node) -> ExperimentSet:
        top = self.keys(root, "the document", ("experiments",), ("experiments",))
        node = top["experiments"][1]
        if is_null(node):
            return NO_EXPERIMENTS
        entries = self.sequence(node, "experiments")
        if len(entries) > MAX_EXPERIMENTS:
            raise self.fail(node, f"at most {MAX_EXPERIMENTS} experiments")
        out: list[Experiment] = []
        lines: dict[str, int] = {}
        for entry in entries:
            experiment = self._experiment(entry)
            if experiment.name in lines:
                raise self.fail(
                    entry,
                    f"experiment {experiment.name!r} is already defined on line "
                    f"{lines[experiment.name]}",
                )
            self._check_overlap(entry, experiment, out, lines)
            lines[experiment.name] = line_of(entry)
            out.append(experiment)
        return ExperimentSet(out) if out else NO_EXPERIMENTS

    def _check_overlap(
        self,
        node: yaml.Node,
        new: Experiment,
        earlier: Sequence[Experiment],
        lines: Mapping[str, int],
    ) -> None:
        """Two experiments a user can be in at once must not set the same parameter."""
        mine = {k for v in new.variants for k in v.settings()}
        for other in earlier:
            if other.feed != new.feed:
                continue
            shared = mine & {k for v in other.variants for k in v.settings()}
            if shared:
                raise self.fail(
                    node,
                    f"experiments {other.name!r} (line {lines[other.name]}) and {new.name!r} "
                    f"both set {', '.join(sorted(shared))}: a user in both would get only one",
                )

    def _name(self, node: yaml.Node, what: str) -> str:
        name = self.text(node, what, ids=True, limit=48)
        if not _NAME.fullmatch(name):
            raise self.fail(
                node, f"{what} must be 1-48 letters, digits, '_' or '-' (a letter or digit first)"
            )
        return name

    def _experiment(self, node: yaml.Node) -> Experiment:
        entry = self.keys(node, "an experiment", _EXPERIMENT_KEYS, ("name", "variants"))
        name = self._name(entry["name"][1], "name")
        feed = "home"
        if "feed" in entry:
            fnode = entry["feed"][1]
            feed = self.text(fnode, "feed")
            if feed not in EXPERIMENT_FEEDS:
                raise self.fail(fnode, f"feed must be one of {', '.join(EXPERIMENT_FEEDS)}")
        traffic = 1.0
        if "traffic" in entry:
            traffic = self.number(
                entry["traffic"][1], "traffic", low=0, high=1, rule="between 0 and 1"
            )
        salt = ""
        if "salt" in entry:
            salt = self.text(entry["salt"][1], "salt", ids=True, limit=64)
        vnode = entry["variants"][1]
        variants = [self._variant(v) for v in self.sequence(vnode, "variants")]
        if not 2 <= len(variants) <= MAX_VARIANTS:
            raise self.fail(vnode, f"an experiment needs 2 to {MAX_VARIANTS} variants")
        seen: set[str] = set()
        for variant, vn in zip(variants, vnode.value, strict=True):
            if variant.name in seen:
                raise self.fail(vn, f"variant {variant.name!r} is named twice")
            seen.add(variant.name)
        if sum(v.weight for v in variants) <= 0:
            raise self.fail(vnode, "at least one variant needs a weight above 0")
        return Experiment(name, tuple(variants), feed, traffic, salt)

    def _variant(self, node: yaml.Node) -> Variant:
        entry = self.keys(node, "a variant", _VARIANT_KEYS, ("name",))
        name = self._name(entry["name"][1], "variant name")
        weight = 1.0
        if "weight" in entry:
            weight = self.number(
                entry["weight"][1], "weight", low=0, high=1e6, rule="between 0 and 1000000"
            )
        algorithm = "engine"
        if "algorithm" in entry:
            anode = entry["algorithm"][1]
            algorithm = self.text(anode, "algorithm")
            if algorithm not in ALGORITHMS:
                raise self.fail(anode, f"algorithm must be one of {', '.join(ALGORITHMS)}")
        params: dict[str, float] = {}
        if "params" in entry:
            for key, (knode, vnode) in self.mapping(entry["params"][1], "params").items():
                if key not in PARAMS:
                    raise self.fail(
                        knode, f"unknown parameter {key!r} (one of {', '.join(sorted(PARAMS))})"
                    )
                low, high = PARAMS[key]
                rule = f"between {low:g} and {high:g}"
                value = self.number(vnode, key, low=low, high=high, rule=rule)
                if key in _INT_PARAMS and value != int(value):
                    raise self.fail(vnode, f"{key} must be a whole number {rule}")
                params[key] = value
        return Variant(name, weight, algorithm, tuple(sorted(params.items())))
