"""The install metadata is consistent: environment.yml pins what pyproject.toml pins."""

import re
import tomllib
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def _norm(req: str) -> tuple[str, str]:
    m = re.fullmatch(r"\s*([A-Za-z0-9_.\-\[\]]+?)\s*==\s*([^\s;]+)\s*", req)
    assert m, f"{req!r} is not pinned with =="
    return m.group(1).lower().replace("_", "-"), m.group(2)


def test_environment_yml_matches_pyproject():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    wanted = list(project["dependencies"])
    for extra in ("book", "dev"):
        wanted += project["optional-dependencies"][extra]
    env = yaml.safe_load((REPO / "environment.yml").read_text())
    pip_section = [d for d in env["dependencies"] if isinstance(d, dict) and "pip" in d]
    assert len(pip_section) == 1, "environment.yml needs exactly one pip: section"
    assert dict(map(_norm, pip_section[0]["pip"])) == dict(map(_norm, wanted))
    python = [d for d in env["dependencies"] if isinstance(d, str) and d.startswith("python")]
    assert python == ["python=3.11"], python
    assert project["requires-python"] == ">=3.11,<3.12"


def test_torch_pins_match_the_makefile():
    """The Makefile installs torch/torchvision from the local wheels at the pinned versions."""
    deps = dict(map(_norm, tomllib.loads((REPO / "pyproject.toml").read_text())["project"][
        "dependencies"]))
    makefile = (REPO / "Makefile").read_text()
    assert f"torch=={deps['torch']}" in makefile
    assert f"torchvision=={deps['torchvision']}" in makefile


def test_ci_runs_the_readme_test_command():
    readme = (REPO / "README.md").read_text()
    first_block = readme.split("```")[1]
    assert "make book" in first_block and "make test" in first_block
    ci = (REPO / ".ci" / "run").read_text()
    assert re.search(r"^make test$", ci, re.M)
