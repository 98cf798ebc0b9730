"""The configuration examples in docs/training.md are real: each validates against its model."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel

from training.capture import CaptureSettings
from training.dataset import DatasetConfig
from training.evaluate import GateConfig
from training.qlora import TrainConfig

PAGE = Path(__file__).resolve().parents[2] / "docs" / "training.md"
MODELS: dict[str, type[BaseModel]] = {
    "capture": CaptureSettings,
    "dataset.yaml": DatasetConfig,
    "train.yaml": TrainConfig,
    "gate.yaml": GateConfig,
}
BLOCKS = re.findall(r"```yaml (\S+)\n(.*?)```", PAGE.read_text(), flags=re.DOTALL)


def test_the_page_shows_every_configuration() -> None:
    assert sorted(name for name, _ in BLOCKS) == sorted(MODELS)


@pytest.mark.parametrize(("name", "block"), BLOCKS)
def test_each_configuration_example_validates_and_shows_the_defaults(name: str, block: str) -> None:
    model = MODELS[name]
    parsed = model.model_validate(yaml.safe_load(block))
    if name != "capture":  # the capture example adds a route policy to the defaults
        assert parsed == model()
