import tomllib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(("environment", "extra"), [("environment.yml", "test"), ("environment-gpu.yml", "gpu")])
def test_each_conda_environment_names_pyprojects_dependencies_with_its_extra(environment, extra):
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = set(project["dependencies"]) | set(project["optional-dependencies"][extra])
    env = yaml.safe_load((ROOT / environment).read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert {p for p in pip if not p.startswith("-e")} == wanted
