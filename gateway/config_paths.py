"""Paths written in a config file: a relative one means relative to the file's own folder.

`load_config` validates with the folder as pydantic's validation context (`CONFIG_FOLDER`), and
`ConfigPath` resolves against it in one validator; a config validated without a folder (tests,
`parse_config`) keeps its paths as written. URLs (`s3://...`) and absolute paths pass unchanged.
This module imports nothing of Turnout's, so every config section may use it, wherever it lives.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import AfterValidator, ValidationInfo

CONFIG_FOLDER = "config_folder"


def resolve_config_path(location: str, info: ValidationInfo) -> str:
    folder = info.context.get(CONFIG_FOLDER) if isinstance(info.context, dict) else None
    if folder is None or "://" in location or Path(location).is_absolute():
        return location
    return str((Path(folder) / location).resolve())


ConfigPath = Annotated[str, AfterValidator(resolve_config_path)]
