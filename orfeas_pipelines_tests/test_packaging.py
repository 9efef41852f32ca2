"""The pins the contract fixes are the ones installed, and they belong together."""

import tomllib
from importlib.metadata import version
from pathlib import Path

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"
CONTRACT_PINS = {"dagster": "1.13.27", "dagster-webserver": "1.13.27", "dagster-postgres": "0.29.27"}


def declared_pins() -> dict[str, str]:
    project = tomllib.loads(PYPROJECT.read_text())["project"]
    requirements = project["dependencies"] + [req for extra in project["optional-dependencies"].values() for req in extra]
    return dict(req.split("==", 1) for req in requirements if "==" in req)


def test_contract_pins_are_declared_and_installed():
    pins = declared_pins()
    for package, pinned in CONTRACT_PINS.items():
        assert pins.get(package) == pinned, package
        assert version(package) == pinned, package

