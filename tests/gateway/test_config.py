"""The config file: validation errors name the key; `turnout config check|schema`."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
import yaml

from gateway.cli.main import main
from gateway.config import TurnoutConfig, load_config
from gateway.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "turnout.yaml"
    path.write_text(text)
    return path


def test_the_shipped_config_is_valid_and_routes_the_demo_adapters() -> None:
    config = load_config(REPO / "turnout.yaml")
    assert config.routes["support-triage"].stable == "support-triage@v1"
    assert config.routes["chat"].stable is None
    assert Path(config.adapters.store) == REPO / ".turnout" / "demo" / "adapters"


def test_the_issue_example_shape_is_accepted(tmp_path: Path) -> None:
    config = load_config(
        write(
            tmp_path,
            """
server: {host: 127.0.0.1, port: 8080}
base_model: tiny
backends:
  - url: http://127.0.0.1:8000
adapters:
  store: ./.turnout/adapters
routes:
  support-triage:
    stable: support-triage@v1
  chat: {}
""",
        )
    )
    assert [b.url for b in config.backends] == ["http://127.0.0.1:8000"]
    assert Path(config.adapters.store) == tmp_path / ".turnout" / "adapters"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("routes:\n  a: {stabel: a@v1}\n", "routes.a.stabel: unknown key"),
        ("servr: {port: 1}\n", "servr: unknown key"),
        ("server: {port: http}\n", "server.port: Input should be a valid integer"),
        ("server: {port: 70000}\n", "server.port: Input should be less than or equal to 65535"),
        (
            "routes:\n  a: {stable: no-version}\n",
            "routes.a.stable: 'no-version' is not a valid name",
        ),
        (
            "routes:\n  a: {stable: ../../etc@v1}\n",
            "routes.a.stable: '../../etc@v1' is not a valid",
        ),
        ("routes:\n  'bad route': {}\n", "routes.bad route.[key]: 'bad route' is not a valid name"),
        ("backends:\n  - url: ftp://x\n", "backends.0.url: must be an http(s) origin"),
        (
            "backends:\n  - url: http://h:1/v1\n",
            "backends.0.url: must be an http(s) origin",
        ),
        ("timeouts: {response_s: 0}\n", "timeouts.response_s: Input should be greater than 0"),
        (
            "server: {port: 8080, metrics_port: 8080}\n",
            "server: port, admin_port and metrics_port must differ",
        ),
        (
            "adapters: {max_loras: 4, max_cpu_loras: 2}\n",
            "adapters: max_cpu_loras (2) must be at least max_loras (4)",
        ),
        ("adapters: {max_lora_rank: 12}\n", "adapters.max_lora_rank: Input should be 1, 8, 16"),
        ("- just\n- a list\n", "the top level must be a mapping"),
        ("routes: {a: [}\n", "invalid YAML"),
    ],
)
def test_config_errors_name_the_key_and_the_problem(
    tmp_path: Path, text: str, expected: str
) -> None:
    with pytest.raises(ConfigError) as raised:
        load_config(write(tmp_path, text))
    assert expected in raised.value.message
    assert str(tmp_path) in raised.value.message


def test_a_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "absent.yaml")


def test_config_check_reports_ok_and_errors_with_exit_codes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = write(tmp_path, "routes: {chat: {}}\n")
    assert main(["config", "check", str(good)]) == 0
    assert "OK (1 routes, 0 backends)" in capsys.readouterr().out
    bad = tmp_path / "bad.yaml"
    bad.write_text("routes: {chat: {stable: 3}}\n")
    assert main(["config", "check", str(bad)]) == 2
    assert "routes.chat.stable: Input should be a valid string" in capsys.readouterr().err


def test_config_schema_is_a_json_schema_that_describes_routes(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["config", "schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    assert schema["$schema"].endswith("2020-12/schema")
    assert {"server", "backends", "routes", "adapters"} <= set(schema["properties"])
    assert schema["additionalProperties"] is False


def test_the_schema_accepts_the_shipped_config() -> None:
    document = yaml.safe_load((REPO / "turnout.yaml").read_text())
    jsonschema.validate(document, TurnoutConfig.model_json_schema())


def test_relative_paths_are_relative_to_the_config_file_not_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "etc"
    folder.mkdir()
    monkeypatch.chdir(tmp_path)
    path = write(
        folder,
        "adapters: {store: store}\nstate: {dir: ../state}\nembedded: {model: m}\n"
        "capture: {path: c.db}\nauth: {keys_file: keys.yaml, admin_keys_file: /abs/admin.yaml}\n",
    )
    config = load_config(path)
    assert config.adapters.store == str(folder / "store")
    assert config.state.dir == str(tmp_path / "state")
    assert config.embedded.model == str(folder / "m")
    assert config.capture.path == str(folder / "c.db")
    assert config.auth.keys_file == str(folder / "keys.yaml")
    assert config.auth.admin_keys_file == "/abs/admin.yaml"
    untouched = load_config(write(folder, "adapters: {store: 's3://bucket/prefix'}\n"))
    assert untouched.adapters.store == "s3://bucket/prefix"
    assert untouched.state.dir == str(folder / ".turnout" / "state")  # defaults resolve too
