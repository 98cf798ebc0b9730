"""Reading a value out of a Prometheus text page, as the tests' assertions need it."""

from __future__ import annotations

from gateway.upstream.backend_metrics import parse_samples


def counter(text: str, name: str, **labels: str) -> float:
    """The sum of `name`'s samples in `text` whose labels include `labels`."""
    return sum(
        sample.value
        for sample in parse_samples(text, [name])
        if all(sample.labels.get(key) == value for key, value in labels.items())
    )
