"""compose.yaml against the Compose Specification's JSON schema, and .env.example against the
settings class: every setting is documented there, every key there is a setting or a variable
compose.yaml interpolates, and the example values are valid settings.

tests/data/compose-spec.json is schema/compose-spec.json of the compose-spec/compose-spec
repository (Apache-2.0), commit 170098ba07d9f53c383a41bfd4c5166b0a4529a6.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import jsonschema
import pytest
import yaml

from services.common.settings import Settings

ROOT = Path(__file__).resolve().parents[3]
ENV_LINE = re.compile(r"^#?\s*([A-Z][A-Z0-9_]*)=(\S*)")
COMPOSE_VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)")
SERVICES = {"postgres", "storage", "storage-init", "qdrant", "migrate", "dispatcher",
            "local-dispatcher", "reconciler", "api"}


def _compose() -> dict:
    return yaml.safe_load((ROOT / "compose.yaml").read_text())


def _env_example() -> dict[str, str]:
    """KEY -> example value of every KEY=value line, commented out or not."""
    entries = {}
    for line in (ROOT / ".env.example").read_text().splitlines():
        if match := ENV_LINE.match(line):
            assert match[1] not in entries, f"{match[1]} appears twice in .env.example"
            entries[match[1]] = match[2]
    return entries


def _setting_names() -> set[str]:
    return {field.validation_alias for field in Settings.model_fields.values()}


def _compose_variables() -> set[str]:
    return set(COMPOSE_VARIABLE.findall((ROOT / "compose.yaml").read_text()))


def test_compose_file_follows_the_compose_specification():
    schema = json.loads((ROOT / "tests/data/compose-spec.json").read_text())
    jsonschema.Draft7Validator(schema).validate(_compose())


def test_compose_runs_every_service_in_the_right_order():
    services = _compose()["services"]
    assert set(services) == SERVICES
    assert services["migrate"]["command"] == ["db", "upgrade"]
    for name in ("dispatcher", "local-dispatcher", "reconciler", "api"):
        after = services[name]["depends_on"]
        assert after["migrate"]["condition"] == "service_completed_successfully", name
        assert after["storage-init"]["condition"] == "service_completed_successfully", name
    assert services["dispatcher"]["profiles"] == ["runpod"]
    assert services["local-dispatcher"]["profiles"] == ["local"]
    assert services["local-dispatcher"]["build"]["dockerfile"] == "services/trainer/Dockerfile"
    assert "--launcher" in services["dispatcher"]["command"]


def test_every_setting_is_in_env_example():
    missing = _setting_names() - set(_env_example())
    assert not missing, f"add these settings to .env.example: {sorted(missing)}"


def test_every_env_example_key_is_a_setting_or_a_compose_variable():
    unknown = set(_env_example()) - _setting_names() - _compose_variables()
    assert not unknown, f"neither a setting nor used by compose.yaml: {sorted(unknown)}"


def test_every_compose_variable_is_in_env_example():
    missing = _compose_variables() - set(_env_example())
    assert not missing, f"compose.yaml uses these; document them in .env.example: {sorted(missing)}"


def test_env_example_values_are_valid_settings():
    settings = {k: v for k, v in _env_example().items() if k in _setting_names()}
    Settings.model_validate(settings)


@pytest.mark.parametrize("dockerfile, entrypoint", [
    ("Dockerfile", '["skutrain"]'),
    ("services/trainer/Dockerfile", '["python", "-m", "services.trainer.handler"]'),
])
def test_dockerfiles_pin_torch_and_name_their_entry_point(dockerfile, entrypoint):
    text = (ROOT / dockerfile).read_text()
    pin = re.search(r'"torch==([\d.]+)"', (ROOT / "pyproject.toml").read_text())[1]
    assert f'"torch=={pin}"' in text
    assert f"ENTRYPOINT {entrypoint}" in text
    for copied in re.findall(r"^COPY (\S+)", text, re.M):
        assert (ROOT / copied).exists(), f"{dockerfile} copies {copied}, which does not exist"
