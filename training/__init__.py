"""The flywheel: capture answers, build a dataset, train a QLoRA adapter, gate it.

Only `training.capture` and `training.redaction` may be imported by the gateway; everything
else here imports model code and runs as its own process.
"""
