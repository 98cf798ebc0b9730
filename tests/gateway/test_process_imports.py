"""The gateway process stays light: serving never imports torch, transformers or vLLM."""

from __future__ import annotations

import subprocess
import sys

HEAVY = ("torch", "transformers", "vllm", "peft")


def test_the_gateway_and_its_cli_import_no_model_code() -> None:
    probe = (
        "import sys, gateway.cli.main, gateway.serving.server, gateway.serving.app;"
        "import gateway.serving.embedded_vllm;"
        "from gateway.bench import overhead;"
        f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
