"""What `pip install .` gives a production machine: every third-party package the product
imports is declared in install_requires (not reached through another package's
dependencies), and the development-only parts (the fake APNs, honcho) stay out."""

from __future__ import annotations

import ast
import configparser
import re
import shutil
import subprocess
import sys
import zipfile
from importlib.metadata import packages_distributions
from pathlib import Path

from settings import PROJECT_ROOT

PRODUCT = ("api", "models", "workers", "realtime", "settings.py", "celeryconfig.py")
DEV_ONLY = {"honcho", "cryptography"}
NOT_SOURCE = (
    ".git",
    ".venv",
    "var",
    "build",
    "node_modules",
    "*.egg-info",
    "__pycache__",
    ".*_cache",
)


def _requirement_names(lines: str) -> set[str]:
    names = set()
    for line in lines.strip().splitlines():
        match = re.match(r"\s*([A-Za-z0-9_.-]+)", line)
        if match:
            names.add(match.group(1).lower().replace("_", "-"))
    return names


def _setup_cfg() -> configparser.ConfigParser:
    config = configparser.ConfigParser()
    config.read(PROJECT_ROOT / "setup.cfg")
    return config


def _imported_top_level_modules() -> set[str]:
    files: list[Path] = []
    for part in PRODUCT:
        path = PROJECT_ROOT / part
        files.extend(path.rglob("*.py") if path.is_dir() else [path])
    modules = set()
    for file in files:
        for node in ast.walk(ast.parse(file.read_text(), str(file))):
            if isinstance(node, ast.Import):
                modules.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules.add(node.module.split(".")[0])
    return modules


def test_every_imported_package_is_declared() -> None:
    declared = _requirement_names(_setup_cfg()["options"]["install_requires"])
    distributions = packages_distributions()
    own = {"api", "models", "workers", "realtime", "settings", "celeryconfig"}
    undeclared = {}
    for module in sorted(_imported_top_level_modules() - own - set(sys.stdlib_module_names)):
        names = {name.lower().replace("_", "-") for name in distributions.get(module, [])}
        assert names, f"{module} is imported but no installed distribution provides it"
        if not names & declared:
            undeclared[module] = sorted(names)
    assert undeclared == {}, f"imported by the product but not in install_requires: {undeclared}"


def test_development_tools_are_not_production_requirements() -> None:
    config = _setup_cfg()
    declared = _requirement_names(config["options"]["install_requires"])
    assert declared & DEV_ONLY == set()
    assert DEV_ONLY <= _requirement_names(config["options.extras_require"]["dev"])


def test_the_wheel_ships_the_product_without_the_fake_apns(tmp_path: Path) -> None:
    source = tmp_path / "source"  # setuptools builds in the source folder: a copy of it
    shutil.copytree(PROJECT_ROOT, source, ignore=shutil.ignore_patterns(*NOT_SOURCE))
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "-q",
            "-w",
            str(tmp_path / "wheel"),
            str(source),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = (tmp_path / "wheel").glob("dispatch-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {name.split("/")[0] for name in names if not name.startswith("dispatch-")}
    assert tops == {"api", "models", "workers", "realtime", "settings.py", "celeryconfig.py"}
    assert "api/common_passwords.txt" in names
    assert "fake_apns" not in tops
