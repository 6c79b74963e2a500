"""Packaging consistency: pyproject.toml, environment.yml and requirements-cpu.txt agree."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
import yaml

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    tomllib = pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parent.parent

# PyPI name (normalised) -> acceptable conda-forge names (normalised).
CONDA_NAMES = {
    "torch": {"pytorch-cpu", "pytorch"},
}

_NAME_RE = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _req_name(requirement: str) -> str:
    """Distribution name of a PEP 508 / conda spec, without extras or version."""
    match = _NAME_RE.match(requirement)
    assert match, f"cannot parse requirement {requirement!r}"
    return _normalise(match.group(1))


def _pyproject() -> dict:
    with open(ROOT / "pyproject.toml", "rb") as fh:
        return tomllib.load(fh)


def _pyproject_requirements() -> list[str]:
    project = _pyproject()["project"]
    return list(project["dependencies"]) + list(project["optional-dependencies"]["dev"])


def _conda_names() -> set[str]:
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    names = set()
    for entry in env["dependencies"]:
        if isinstance(entry, str):  # skip the nested `pip:` section
            names.add(_req_name(entry))
    return names


def test_req_name_strips_extras_and_versions():
    assert _req_name("dask[array]>=2024.1") == "dask"
    assert _req_name("moto[server]>=5") == "moto"
    assert _req_name("PyYAML>=6") == "pyyaml"
    assert _req_name("pytorch-cpu>=2.4,<3") == "pytorch-cpu"
    assert _req_name("python=3.11") == "python"


def test_environment_yml_has_every_pyproject_dependency():
    conda = _conda_names()
    missing = []
    for req in _pyproject_requirements():
        name = _req_name(req)
        if not CONDA_NAMES.get(name, {name}) & conda:
            missing.append(req)
    assert not missing, f"in pyproject.toml but not in environment.yml: {missing}"


def test_pyproject_has_every_environment_yml_dependency():
    reverse = {conda: pypi for pypi, names in CONDA_NAMES.items() for conda in names}
    pypi = {_req_name(req) for req in _pyproject_requirements()}
    extra = sorted(
        name for name in _conda_names() - {"python", "pip"} if reverse.get(name, name) not in pypi
    )
    assert not extra, f"in environment.yml but not in pyproject.toml: {extra}"


def test_environment_yml_installs_the_package():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    assert "conda-forge" in env["channels"]
    pip_sections = [e["pip"] for e in env["dependencies"] if isinstance(e, dict) and "pip" in e]
    assert pip_sections and "-e ." in pip_sections[0]


def test_torch_pinned_for_setup_but_ranged_in_package():
    lines = [
        line.split("#", 1)[0].strip()
        for line in (ROOT / "requirements-cpu.txt").read_text().splitlines()
    ]
    lines = [line for line in lines if line]
    assert lines == ["torch==2.13.0"]

    torch_reqs = [r for r in _pyproject()["project"]["dependencies"] if _req_name(r) == "torch"]
    assert len(torch_reqs) == 1
    assert "==" not in torch_reqs[0] and "===" not in torch_reqs[0]
    assert re.search(r">=|>|<|~=", torch_reqs[0]), torch_reqs[0]


def test_no_pinned_dependencies_in_pyproject():
    pinned = [r for r in _pyproject_requirements() if "==" in r]
    assert not pinned, f"pyproject.toml must use ranges, not pins: {pinned}"


def test_console_script_entry_point():
    scripts = _pyproject()["project"]["scripts"]
    assert scripts["georaster-quant"] == "georaster_quant.cli.main:main"
