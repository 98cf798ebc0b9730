"""The control plane: applies config files and rollout changes by publishing new routing
tables, loading the versions a new table needs before it swaps in (`plane`). Imports routing,
upstream (the adapter loader) and rollouts; the API and serving import it.
"""
