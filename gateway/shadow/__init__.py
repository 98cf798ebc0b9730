"""Shadow rollouts: copy a share of a route's requests to its candidate, compare the answers.

Owns the shadow dispatch (sampling, its own admission budget, shedding), the pairwise
comparison of a stable answer with the candidate's, the per-rollout pair tallies and their
pooling through Redis, and the paired analysis. May import the gateway's routing, proxy,
admission, contracts, analysis and rollouts modules, `monitoring.metrics` and
`training.capture`; the request path imports it only through `gateway.shadow.dispatch`.
"""
