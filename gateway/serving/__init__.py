"""The gateway as a process: `app` (create_app: every part assembled into the ASGI app),
uvicorn and its coalescing HTTP/1.1 transport (`transport`), the listeners (public, admin,
metrics), several worker processes for one replica (`workers`), the signals worker beside the
path (`signals`: refusal scoring and semantic-drift embedding), start-up checks and their
one-paragraph failures, the embedded vLLM that `turnout up` runs, and readiness. The top of the
request path: may import every gateway family below it; only `gateway.cli` and `gateway.bench`
import it.
"""
