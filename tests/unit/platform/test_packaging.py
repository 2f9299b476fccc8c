"""Every data file the services read at run time is declared as package data, so an installed
package (the container image) has it too, not only the source tree."""

import tomllib
from fnmatch import fnmatch
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]


def test_every_non_python_file_in_the_service_packages_is_package_data():
    package_data = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    undeclared = []
    for service in ("intake", "referral", "notification"):
        package = REPO / "services" / service / service
        for path in package.rglob("*"):
            if path.is_dir() or path.suffix in (".py", ".pyc") or "__pycache__" in path.parts:
                continue
            relative = path.relative_to(package).as_posix()
            if not any(fnmatch(relative, pattern) for pattern in package_data.get(service, [])):
                undeclared.append(f"{service}/{relative}")
    assert undeclared == [], "add these to [tool.setuptools.package-data] in pyproject.toml"
