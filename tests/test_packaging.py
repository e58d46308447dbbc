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


def test_the_readme_map_names_every_module_where_it_lives():
    """The README's map of ``batchml/`` is the folder listing: a module added or moved shows there."""
    import re

    text = (ROOT / "README.md").read_text()
    block = text[text.index("```\nbatchml/\n") + len("```\nbatchml/\n"):]
    block = re.sub(r"\([^)]*\)", "", block[:block.index("```")])  # drop the asides
    mapped, folder = set(), None
    for line in block.splitlines():
        head = re.match(r"  (\w+)/ ", line)
        folder = head.group(1) if head else (None if re.match(r"  \w", line) else folder)
        # a module of a sub-folder is written with its folder: rules/config
        listed = line.split("/", 1)[1] if head else line
        names = re.findall(r"\b([a-z_][a-z0-9_]*(?:/[a-z_][a-z0-9_]*)*)(?:\.py)?\b", listed)
        mapped |= {f"{folder}/{n}" if folder else n for n in names}
    modules = {p.relative_to(ROOT / "batchml").with_suffix("").as_posix() for p in (ROOT / "batchml").rglob("*.py")
               if not p.name.startswith("__")}
    assert modules - mapped == set()
