"""Versions switched and judged over time: the rollout model (canary, A/B; `model`, which the
config imports), the sequential analysis and its evidence pooled across replicas, the state
store (file or Redis), the audit log, and the controller that steps, promotes and rolls back.
Imports only the config, errors and `monitoring`; never the request path.
"""
