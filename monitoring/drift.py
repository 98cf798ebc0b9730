"""Input drift per route and adapter version: a reference profile, a live window, PSI and JS.

Each (route, version) keeps two sets of feature counts over its prompts:

- the reference: given (`set_reference`, e.g. the adapter's training prompts), or else the
  first `reference_size` live prompts;
- the live window: the last `window_size` prompts, kept in a ring buffer whose slots remember
  each prompt's features, so adding one prompt and evicting the oldest costs the same whatever
  the window's size.

Features: the prompt's length in tokens (log-spaced bins; the caller passes the backend's
count, the gateway has no tokenizer), the mix of character classes (per-mille shares of ASCII
letters, digits, whitespace, other ASCII, non-ASCII; each prompt weighs the same) and a hashed
term distribution (`term_buckets` buckets, CRC-32 of each lower-cased word; words are split
at whitespace and ASCII punctuation). `scores()`
compares the two with the population stability index and the Jensen-Shannon divergence;
`refresh_gauges()` publishes them as `turnout_drift_score`, off the request path.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
import math
import threading
import zlib
from array import array
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from monitoring import metrics

_log = logging.getLogger(__name__)

# A PSI above 0.25 is the usual mark of a population that changed; 0.1 to 0.25, of one moving.
DRIFT_PSI_THRESHOLD = 0.25
# Upper edges of the prompt-length bins, in tokens; one more bin holds everything longer.
LENGTH_EDGES = (8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192)
CHAR_CLASSES = ("letter", "digit", "whitespace", "punctuation", "non_ascii")
FEATURES = ("prompt_tokens", "char_class", "terms")
# Stands in for an empty bin in PSI, whose log ratio is otherwise infinite.
_PSI_FLOOR = 1e-4

# Words for the term histogram: ASCII lower-cased, ASCII punctuation as a separator; bytes,
# because translating and splitting bytes costs a fraction of a regex over the text.
_TERM_BYTES = bytes(
    code + 32 if 65 <= code <= 90 else 32 if code < 128 and not chr(code).isalnum() else code
    for code in range(256)
)
_CLASS_OF_ASCII = {
    code: "L" if chr(code).isalpha() else "D" if chr(code).isdigit() else "W"
    if chr(code).isspace() else "P"
    for code in range(128)
}  # fmt: skip


@dataclass(frozen=True, slots=True)
class DriftConfig:
    """How much each profile remembers and reads."""

    window_size: int = 1000
    reference_size: int = 1000
    min_window: int = 200
    term_buckets: int = 256
    max_chars: int = 1024

    def __post_init__(self) -> None:
        if min(self.window_size, self.reference_size, self.min_window, self.max_chars) < 1:
            raise ValueError("window_size, reference_size, min_window and max_chars must be >= 1")
        if not 2 <= self.term_buckets <= 65536:
            raise ValueError("term_buckets must be between 2 and 65536")


@dataclass(frozen=True, slots=True)
class PromptFeatures:
    """What the drift statistics need to know of one prompt."""

    length_bin: int | None  # None when the backend did not report the token count
    char_mix: tuple[int, ...]  # per-mille shares, in CHAR_CLASSES order
    terms: array[int]  # one bucket per word


@dataclass(frozen=True, slots=True)
class DriftScore:
    """One statistic of one feature for one route and version."""

    route: str
    version: str
    feature: str
    statistic: str
    value: float


def length_bin(prompt_tokens: int) -> int:
    return bisect.bisect_right(LENGTH_EDGES, prompt_tokens)


def prompt_features(
    text: str, prompt_tokens: int | None, term_buckets: int, max_chars: int
) -> PromptFeatures:
    """The features of one prompt (its first `max_chars` characters)."""
    text = text[:max_chars]
    classes = text.translate(_CLASS_OF_ASCII)
    letters, digits, spaces, others = (classes.count(code) for code in "LDWP")
    total = len(text) or 1
    non_ascii = len(text) - letters - digits - spaces - others
    mix = tuple(count * 1000 // total for count in (letters, digits, spaces, others, non_ascii))
    words = text.encode("utf-8", "replace").translate(_TERM_BYTES).split()
    terms = array("H", [zlib.crc32(word) % term_buckets for word in words])
    length = None if prompt_tokens is None else length_bin(prompt_tokens)
    return PromptFeatures(length, mix, terms)


class FeatureCounts:
    """Counts of every feature's bins over a set of prompts; prompts can be added and removed."""

    def __init__(self, term_buckets: int) -> None:
        self.prompts = 0
        self.lengths = [0] * (len(LENGTH_EDGES) + 1)
        self.chars = [0] * len(CHAR_CLASSES)
        self.terms = [0] * term_buckets

    def add(self, features: PromptFeatures, sign: int = 1) -> None:
        self.prompts += sign
        if features.length_bin is not None:
            self.lengths[features.length_bin] += sign
        chars = self.chars
        for index, share in enumerate(features.char_mix):
            chars[index] += sign * share
        terms = self.terms
        for bucket in features.terms:
            terms[bucket] += sign

    def histograms(self) -> dict[str, list[int]]:
        """Each feature's bin counts, by feature name (copies)."""
        return {
            "prompt_tokens": self.lengths[:],
            "char_class": self.chars[:],
            "terms": self.terms[:],
        }


class SlidingWindow:
    """The features of the last `size` prompts and their counts; O(1) in `size` per prompt."""

    def __init__(self, size: int, term_buckets: int) -> None:
        self._slots: list[PromptFeatures | None] = [None] * size
        self._next = 0
        self.counts = FeatureCounts(term_buckets)

    def push(self, features: PromptFeatures) -> None:
        evicted = self._slots[self._next]
        if evicted is not None:
            self.counts.add(evicted, sign=-1)
        self._slots[self._next] = features
        self.counts.add(features)
        self._next = (self._next + 1) % len(self._slots)


def _proportions(counts: Sequence[int]) -> list[float]:
    total = sum(counts)
    return [count / total for count in counts]


def population_stability_index(reference: Sequence[int], live: Sequence[int]) -> float:
    """PSI = sum((live - ref) * ln(live / ref)) over bins, empty bins floored at 1e-4."""
    expected = [max(share, _PSI_FLOOR) for share in _proportions(reference)]
    actual = [max(share, _PSI_FLOOR) for share in _proportions(live)]
    return sum((a - e) * math.log(a / e) for e, a in zip(expected, actual, strict=True))


def jensen_shannon_divergence(reference: Sequence[int], live: Sequence[int]) -> float:
    """JS divergence in bits: 0 for equal distributions, 1 for disjoint ones."""
    p, q = _proportions(reference), _proportions(live)
    total = 0.0
    for a, b in zip(p, q, strict=True):
        middle = (a + b) / 2
        if a > 0:
            total += a * math.log2(a / middle) / 2
        if b > 0:
            total += b * math.log2(b / middle) / 2
    return total


class _Profile:
    """Reference and live window of one route and version."""

    def __init__(self, config: DriftConfig) -> None:
        self.reference = FeatureCounts(config.term_buckets)
        self.reference_open = True  # filling from live prompts until it holds reference_size
        self.window = SlidingWindow(config.window_size, config.term_buckets)


class DriftMonitor:
    """Keeps every route/version's drift profile; the gateway calls `observe` per request.

    Thread-safe: `observe` may run on the event loop while `scores` runs in another thread.
    """

    def __init__(self, config: DriftConfig | None = None) -> None:
        self.config = config or DriftConfig()
        self._profiles: dict[tuple[str, str], _Profile] = {}
        self._lock = threading.Lock()
        self._failed_once = False
        self._drifting: frozenset[tuple[str, str]] = frozenset()

    def drifting(self, route: str, version: str) -> bool:
        """Whether a feature's PSI of this route/version was over `DRIFT_PSI_THRESHOLD` (the
        input-drift alert's threshold) at the latest refresh."""
        return (route, version) in self._drifting

    def set_reference(
        self,
        route: str,
        version: str,
        texts: Iterable[str],
        prompt_tokens: Iterable[int | None] | None = None,
    ) -> None:
        """Use these prompts (e.g. the adapter's training prompts) as the reference profile.

        Without token counts the prompt-length feature is not scored for this version.
        """
        config = self.config
        reference = FeatureCounts(config.term_buckets)
        tokens = iter(prompt_tokens) if prompt_tokens is not None else None
        for text in texts:
            count = next(tokens) if tokens is not None else None
            reference.add(prompt_features(text, count, config.term_buckets, config.max_chars))
        profile = _Profile(config)
        profile.reference = reference
        profile.reference_open = False
        with self._lock:
            self._profiles[(route, version)] = profile

    def observe(self, route: str, version: str, text: str, prompt_tokens: int | None) -> None:
        """Count one live prompt. Never raises: drift must not fail a request."""
        try:
            config = self.config
            features = prompt_features(text, prompt_tokens, config.term_buckets, config.max_chars)
            with self._lock:
                profile = self._profiles.get((route, version))
                if profile is None:
                    profile = self._profiles[(route, version)] = _Profile(config)
                if profile.reference_open:
                    profile.reference.add(features)
                    profile.reference_open = profile.reference.prompts < config.reference_size
                else:
                    profile.window.push(features)
        except Exception:
            if not self._failed_once:
                self._failed_once = True
                _log.exception("drift: could not observe a prompt (logged once)")

    def scores(self) -> list[DriftScore]:
        """PSI and JS of every feature, for every profile whose reference and window are full."""
        with self._lock:
            snapshots = [
                (key, profile.reference.histograms(), profile.window.counts.histograms())
                for key, profile in self._profiles.items()
                if not profile.reference_open
                and profile.window.counts.prompts >= self.config.min_window
            ]
        scores = []
        for (route, version), reference, live in snapshots:
            for feature in FEATURES:
                if sum(reference[feature]) == 0 or sum(live[feature]) == 0:
                    continue  # e.g. no token counts given with the reference texts
                for statistic, value in (
                    ("psi", population_stability_index(reference[feature], live[feature])),
                    ("js", jensen_shannon_divergence(reference[feature], live[feature])),
                ):
                    scores.append(DriftScore(route, version, feature, statistic, value))
        return scores

    def refresh_gauges(self) -> None:
        """Compute the scores and set `turnout_drift_score` from them."""
        scores = self.scores()
        self._drifting = frozenset(
            (score.route, score.version)
            for score in scores
            if score.statistic == "psi" and score.value > DRIFT_PSI_THRESHOLD
        )
        for score in scores:
            metrics.DRIFT_SCORE.labels(
                score.route, score.version, score.feature, score.statistic
            ).set(score.value)

    async def refresh_forever(self, interval_s: float) -> None:
        """Refresh the gauges every `interval_s` seconds, in a worker thread, until cancelled."""
        while True:
            await asyncio.sleep(interval_s)
            await asyncio.to_thread(self.refresh_gauges)
