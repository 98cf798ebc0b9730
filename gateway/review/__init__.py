"""The review console: a page, its script and a JSON API on the admin listener.

Owns who may review (`access.py`: admin keys, or reviewer keys that open nothing else), the
JSON API over the review queue (`api.py`) and the console's static files (`static/`, served
from the package: no build step, no CDN). Reads and writes the queue only through
`training.review.store`; errors are `TurnoutError`s rendered by `gateway.api.errors`.
"""
