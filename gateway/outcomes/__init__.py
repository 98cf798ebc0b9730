"""After an answer: request metrics, refusal and drift signals, rollout tallies and capture,
handled off the bytes of the answer they judge (`recorder`). Imports rollouts (to tally),
contracts, protection (the caller), routing (the target), `monitoring` and `training.capture`;
only the API and serving import it.
"""
