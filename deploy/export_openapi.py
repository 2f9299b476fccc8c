"""Export each service's OpenAPI document into contracts/openapi/<service>.json.

    python deploy/export_openapi.py            # (re)write the files
    python deploy/export_openapi.py --check    # exit 1 and name the files that differ (CI drift check)

The documents are generated from the code, never written by hand: the script builds each
service's app with its ``create_app`` factory and asks FastAPI for ``app.openapi()``. Building
the app does not run its lifespan, so nothing connects to Kafka or opens the database. The
apps get an in-memory SQLite URL so that exporting leaves no files behind; the database URL
does not appear in the documents.
"""

import argparse
import importlib
import json
import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
OUT_DIR = REPO / "contracts" / "openapi"

# service name -> (module with create_app, settings class "module:Class")
SERVICES: dict[str, tuple[str, str]] = {
    "intake": ("intake.entrypoints.app", "intake.config:IntakeSettings"),
    "referral": ("referral.entrypoints.app", "referral.config:ReferralSettings"),
    "notification": ("notification.entrypoints.app", "notification.config:NotificationSettings"),
}

_IN_MEMORY_DB = "sqlite+aiosqlite:///:memory:"


@contextmanager
def _logging_untouched() -> Iterator[None]:
    """create_app installs the service's JSON log handler on the root logger; put things back."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        yield
    finally:
        root.handlers = handlers
        root.setLevel(level)


def _settings_for(spec: str) -> Any:
    module_name, class_name = spec.split(":")
    settings_cls = getattr(importlib.import_module(module_name), class_name)
    return settings_cls(database_url=_IN_MEMORY_DB)


def build_spec(service: str) -> dict[str, Any]:
    """The OpenAPI document the service's code produces right now."""
    app_module, settings_spec = SERVICES[service]
    create_app = importlib.import_module(app_module).create_app
    with _logging_untouched():
        app = create_app(_settings_for(settings_spec))
    return app.openapi()


def render(spec: dict[str, Any]) -> str:
    """Stable text: sorted keys, two-space indent, trailing newline."""
    return json.dumps(spec, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def rendered_specs() -> dict[str, str]:
    """File name -> rendered document, for every service."""
    return {f"{service}.json": render(build_spec(service)) for service in SERVICES}


def write(out_dir: Path = OUT_DIR) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in rendered_specs().items():
        path = out_dir / name
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return written


def drifted(out_dir: Path = OUT_DIR) -> list[Path]:
    """The committed files that are missing or differ from what the code produces."""
    stale = []
    for name, text in rendered_specs().items():
        path = out_dir / name
        if not path.is_file() or path.read_text(encoding="utf-8") != text:
            stale.append(path)
    return stale


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true",
                        help="do not write; exit 1 if a committed document differs from the code's")
    parser.add_argument("--out-dir", type=Path, default=OUT_DIR, help=f"default: {OUT_DIR.relative_to(REPO)}")
    args = parser.parse_args(argv)
    if args.check:
        stale = drifted(args.out_dir)
        for path in stale:
            print(f"openapi: {_shown(path)} differs from the code; run deploy/export_openapi.py", file=sys.stderr)
        if not stale:
            print("openapi: committed documents match the code", file=sys.stderr)
        return 1 if stale else 0
    for path in write(args.out_dir):
        print(f"openapi: wrote {_shown(path)}", file=sys.stderr)
    return 0


def _shown(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(REPO))
    except ValueError:
        return str(path)


if __name__ == "__main__":
    sys.exit(main())
