"""Which `pip install 'turnout[...]'` extra brings a module the base install lacks.

The base install runs the gateway; commands that need the model stack (`train`, `eval`,
`dataset build`, `flywheel ...`) import it inside the command, and `turnout` turns the
ModuleNotFoundError into this message and exit status 2 instead of a traceback.
"""

from __future__ import annotations

# Top-level module -> the extra that installs it (pyproject.toml [project.optional-dependencies]).
EXTRA_OF_MODULE: dict[str, str] = {
    "torch": "training",
    "transformers": "training",
    "peft": "training",
    "bitsandbytes": "training",
    "accelerate": "training",
    "safetensors": "training",
    "numpy": "training",
    "tqdm": "training",
    "tokenizers": "training",
    "httpx": "training",
    "vllm": "cpu",
    "psutil": "dev",
    "openai": "dev",
}


def missing_extra_message(error: ModuleNotFoundError, command: str) -> str | None:
    """What to tell the user when `command` failed on a module an extra provides; None when
    the missing module belongs to no extra (a real bug, left to surface)."""
    module = (error.name or "").partition(".")[0]
    extra = EXTRA_OF_MODULE.get(module)
    if extra is None:
        return None
    return (
        f"`turnout {command}` needs the `{extra}` extra (module `{module}` is not installed):"
        f" pip install 'turnout[{extra}]'"
    )
