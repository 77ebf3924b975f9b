"""What a stage's code is, and its fingerprint: the modules its entry imports, hashed by what
they do, and the code changes a researcher has accepted as result-neutral.

A stage's code is its entry module and the package modules it imports, directly or through
others (imports inside functions included), found by reading their syntax trees. The scan does
not enter `ddpm/pipeline/` and `ddpm/plumbing/` (nor the command line, `ddpm/cli.py`): what the
pipeline layer decides reaches a job through its settings file, and plumbing (GPU locks, the
torchrun launcher, atomic files, the console) cannot change a result. Where code lives is
therefore the whole declaration; there is no per-stage list of exceptions.

A module's fingerprint is its syntax tree without docstrings: a comment, a docstring, a blank
line or a formatter's rewrap leaves it unchanged; any change to what the code does changes it.

`config/accepted-code.yaml` lists code changes accepted as result-neutral, each written by
`python -m ddpm accept-code` (an explicit act, recorded with who, when and why): a stage whose
code now fingerprints as an accepted `to` keeps the `from` fingerprint its results were made
with, so neither tool reruns it, and the report lists every acceptance.
"""

from __future__ import annotations

import ast
import functools
import getpass
import hashlib
import json
import socket
from datetime import datetime, timezone
from pathlib import Path

import yaml

from ddpm.plumbing.errors import PipelineError
from ddpm.plumbing.files import atomic_write_bytes

PACKAGE = Path(__file__).resolve().parents[1]
# Folders (and top-level modules) that no stage's code includes: the scan stops at them.
OUTSIDE = ("pipeline", "plumbing", "cli.py", "__main__.py")
ACCEPTED = Path("config/accepted-code.yaml")  # relative to the project (where the tools run)


def is_outside(name: str) -> bool:
    """Whether a package file (`evaluation/scores.py`) lies outside every stage's code."""
    return name.split("/", 1)[0] in OUTSIDE


def _module_file(dotted: str, package: Path) -> str | None:
    """`ddpm.evaluation.scores` -> `evaluation/scores.py` (or a package's `__init__.py`)."""
    parts = dotted.split(".")[1:]
    if not parts:
        return None  # `ddpm` itself: its version, which no result depends on
    stem = "/".join(parts)
    if (package / f"{stem}.py").is_file():
        return f"{stem}.py"
    if (package / stem / "__init__.py").is_file():
        return f"{stem}/__init__.py"
    return None


def _parents(name: str) -> set[str]:
    """The `__init__.py` of every sub-package a module sits in (importing it runs them)."""
    parts = name.split("/")[:-1]
    return {"/".join(parts[: i + 1]) + "/__init__.py" for i in range(len(parts))} - {name}


@functools.cache
def _imports(name: str, package: Path) -> frozenset[str]:
    """The package files a module imports (also inside functions); parsed once per process."""
    tree = ast.parse((package / name).read_text())
    found: set[str | None] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module.split(".")[0] != "ddpm":
                continue
            base = _module_file(node.module, package)
            for alias in node.names:  # `from ddpm.evaluation import scores` names a module
                module = _module_file(f"{node.module}.{alias.name}", package)
                found.add(module or base)
        elif isinstance(node, ast.Import):
            found |= {
                _module_file(a.name, package) for a in node.names if a.name.startswith("ddpm.")
            }
    found.discard(None)
    return frozenset(found) | _parents(name)  # type: ignore[arg-type]


@functools.cache
def _closure(entry: str, package: Path, whole: bool) -> tuple[str, ...]:
    seen, todo = [], [entry]
    while todo:
        current = todo.pop()
        if current in seen or (is_outside(current) and current != entry and not whole):
            continue
        seen.append(current)
        todo += sorted(_imports(current, package))
    return tuple(seen)


def import_closure(
    entry: str, package: Path | None = None, *, whole: bool = False
) -> tuple[str, ...]:
    """`entry` and the package files it imports, directly or through others, without entering
    the pipeline layer or the plumbing (`OUTSIDE`); with `whole`, entering them too."""
    return _closure(entry, package or PACKAGE, whole)


class _NoDocstrings(ast.NodeTransformer):
    def generic_visit(self, node):
        super().generic_visit(node)
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and _is_docstring(body[0]):
            node.body = body[1:]
        return node


def _is_docstring(node: ast.AST) -> bool:
    return (
        isinstance(node, ast.Expr)
        and isinstance(node.value, ast.Constant)
        and isinstance(node.value.value, str)
    )


def module_digest(source: str) -> str:
    """A digest of what Python source does: its syntax tree without docstrings, so comments,
    docstrings and formatting do not count."""
    tree = _NoDocstrings().visit(ast.parse(source))
    return hashlib.sha256(ast.dump(tree, annotate_fields=False).encode()).hexdigest()


def file_digest(name: str, package: Path | None = None) -> str:
    """A package file's digest: by its syntax tree for a module, by its bytes otherwise (a
    template's every character reaches the output)."""
    path = (package or PACKAGE) / name
    if path.suffix == ".py":
        return module_digest(path.read_text())
    return hashlib.sha256(path.read_bytes()).hexdigest()


def fingerprint(files: tuple[str, ...], package: Path | None = None) -> str:
    """The fingerprint of a stage's code files (names and digests, in a fixed order)."""
    h = hashlib.sha256()
    for name in sorted(files):
        h.update(f"{name}\0{file_digest(name, package)}\0".encode())
    return h.hexdigest()[:16]


# -- accepted code changes -----------------------------------------------------------------------

_HEADER = (
    "# Code changes accepted as result-neutral, newest last. Written by `python -m ddpm\n"
    "# accept-code STAGE --reason TEXT`; do not edit by hand. A stage whose code fingerprints as\n"
    "# `to` keeps the fingerprint `from` that its results were made with, so it does not rerun.\n"
    "# The report lists every entry. Delete an entry to rerun what it kept.\n"
)


class AcceptanceError(PipelineError):
    pass


def read_accepted(path: Path | str = ACCEPTED) -> list[dict]:
    """The entries of the accepted-code file (`config/accepted-code.yaml` of the project the
    tools run in); none when it does not exist."""
    path = Path(path)
    if not path.exists():
        return []
    try:
        entries = yaml.safe_load(path.read_text()) or []
    except (OSError, yaml.YAMLError) as e:
        raise AcceptanceError(f"{path} is unreadable ({e}); restore it from git") from None
    keys = {"stage", "from", "to", "by", "at", "reason"}
    if not isinstance(entries, list) or not all(
        isinstance(e, dict) and keys <= set(e) for e in entries
    ):
        raise AcceptanceError(f"{path} is not a list of accepted changes ({', '.join(keys)})")
    return entries


def effective(stage: str, current: str, accepted: list[dict]) -> str:
    """The fingerprint that stands for `current` code of `stage`: the one its results were made
    with, when a change to `current` was accepted (followed through a chain of acceptances)."""
    kept = {(e["stage"], e["to"]): e["from"] for e in accepted}
    seen = {current}
    while (stage, current) in kept:
        current = kept[(stage, current)]
        if current in seen:
            break
        seen.add(current)
    return current


def accept(
    stage: str, made_with: str, current: str, reason: str, path: Path | str = ACCEPTED
) -> dict:
    """Record that `stage`'s code changed from `made_with` (the fingerprint of its results) to
    `current` without changing any result; returns the entry."""
    if not reason.strip():
        raise AcceptanceError("say why the change cannot alter a result: --reason TEXT")
    entry = {
        "stage": stage,
        "from": made_with,
        "to": current,
        "by": f"{getpass.getuser()}@{socket.gethostname()}",
        "at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "reason": reason.strip(),
    }
    entries = read_accepted(path) + [entry]
    text = _HEADER + yaml.safe_dump(entries, sort_keys=False, allow_unicode=True, width=100)
    atomic_write_bytes(Path(path), text.encode())
    return entry


def recorded_code(settings_dir: Path, stage: str) -> set[str]:
    """The code fingerprints that the settings files of `stage`'s finished instances hold."""
    found = set()
    for path in [settings_dir / f"{stage}.json", *(settings_dir / stage).rglob("*.json")]:
        if path.is_file():
            try:
                found.add(json.loads(path.read_text())["code"])
            except (OSError, ValueError, KeyError, TypeError):
                continue
    return found
