"""Import direction between the top-level packages, read from the source with `ast`.

    cli -> workers -> rmqd, shm
    shm      imports only the standard library (it is attached by every process, depends on nothing)
    rmqd     is the library: it never imports workers or cli, and starts no processes or signals
    rmqd.client (the SDK) imports from rmqd only rmqd.protocol, rmqd.message, rmqd.errors and the
             pure CommitLog record codec rmqd.store.record, also through the modules it imports
    workers  never import cli

Every import statement counts, including the lazy ones inside functions, and relative imports are
resolved. A violation is reported as "path:line imports name".
"""
from __future__ import annotations

import ast
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("rmqd", "shm", "workers", "cli")
CLIENT_MAY_IMPORT = ("rmqd.client", "rmqd.protocol", "rmqd.message", "rmqd.errors", "rmqd.store.record")
LIBRARY_MUST_NOT_IMPORT = ("signal", "subprocess", "multiprocessing")


def module_name(path: Path, root: Path = REPO) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(source: str, module: str, is_package: bool) -> Iterator[tuple[int, str]]:
    """(line, absolute dotted name) of every import in `source`; `from a import b` yields "a.b"."""
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(node.module, node.level, package)
            for alias in node.names:
                yield node.lineno, base if alias.name == "*" else f"{base}.{alias.name}"


def _resolve(name: str | None, level: int, package: str) -> str:
    if level == 0:
        return name or ""
    parts = package.split(".")
    base = ".".join(parts[: len(parts) - (level - 1)])
    return f"{base}.{name}" if name else base


def source_files(root: Path = REPO) -> dict[str, tuple[Path, bool]]:
    """module name -> (path, is_package) for every .py file of the four packages."""
    files = {}
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            files[module_name(path, root)] = (path, path.name == "__init__.py")
    return files


def all_imports(root: Path = REPO) -> dict[str, list[tuple[int, str]]]:
    return {
        module: list(imports_of(path.read_text(encoding="utf-8"), module, is_package))
        for module, (path, is_package) in source_files(root).items()
    }


def within(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == prefix or name.startswith(prefix + ".") for prefix in prefixes)


def violations(imports: dict[str, list[tuple[int, str]]], importer: tuple[str, ...], bad) -> list[str]:
    """"module:line imports name" for every import by a module under `importer` that `bad` flags."""
    return [
        f"{module}:{line} imports {name}"
        for module, found in sorted(imports.items()) if within(module, importer)
        for line, name in found if bad(name)
    ]


IMPORTS = all_imports()


def test_the_checker_sees_lazy_relative_and_from_imports() -> None:
    source = textwrap.dedent("""
        import os
        from . import ring
        from ..errors import RmqError
        def later():
            from workers.supervisor import run_broker
    """)
    found = [name for _, name in imports_of(source, "rmqd.store.commit_log", is_package=False)]
    assert found == ["os", "rmqd.store.ring", "rmqd.errors.RmqError", "workers.supervisor.run_broker"]


def test_the_checker_reports_a_forbidden_import_with_its_line() -> None:
    imports = {"rmqd.store.x": [(3, "workers.writer"), (4, "os")]}
    assert violations(imports, ("rmqd",), lambda name: within(name, ("workers",))) == [
        "rmqd.store.x:3 imports workers.writer"
    ]


def test_every_package_has_source_to_check() -> None:
    for package in PACKAGES:
        assert any(within(module, (package,)) for module in IMPORTS), f"no .py files under {package}/"


def test_shm_imports_only_the_standard_library() -> None:
    def bad(name: str) -> bool:
        top = name.split(".")[0]
        return top != "shm" and top not in sys.stdlib_module_names

    assert violations(IMPORTS, ("shm",), bad) == []


def test_rmqd_never_imports_workers_or_cli() -> None:
    assert violations(IMPORTS, ("rmqd",), lambda name: within(name, ("workers", "cli"))) == []


def test_rmqd_starts_no_processes_and_handles_no_signals() -> None:
    assert violations(IMPORTS, ("rmqd",), lambda name: within(name, LIBRARY_MUST_NOT_IMPORT)) == []


def test_the_client_imports_only_protocol_message_errors_and_the_record_codec() -> None:
    def bad(name: str) -> bool:
        return within(name, ("rmqd",)) and not within(name, CLIENT_MAY_IMPORT)

    assert violations(IMPORTS, ("rmqd.client",), bad) == []


def test_what_the_client_imports_also_stays_inside_that_set() -> None:
    """rmqd.protocol importing rmqd.store.commit_log would drag the store into the SDK indirectly.

    Importing rmqd.store.record also runs rmqd/store/__init__.py, so packages on the way (not the
    rmqd root, which re-exports the public API) are followed too.
    """
    reached = {module for module in IMPORTS if within(module, ("rmqd.client",))}
    todo = list(reached)
    while todo:
        for _, name in IMPORTS[todo.pop()]:
            for target in _modules_run_by(name):
                if target not in reached:
                    reached.add(target)
                    todo.append(target)
    parents = {prefix.rpartition(".")[0] for prefix in CLIENT_MAY_IMPORT}
    outside = sorted(m for m in reached if not within(m, CLIENT_MAY_IMPORT) and m not in parents)
    assert outside == [], f"the SDK reaches {outside}"


def test_workers_never_import_cli() -> None:
    assert violations(IMPORTS, ("workers",), lambda name: within(name, ("cli",))) == []


def _modules_run_by(name: str) -> list[str]:
    """Repo modules that importing `name` executes: the module itself and its packages below the root."""
    parts = name.split(".")
    prefixes = (".".join(parts[:end]) for end in range(2, len(parts) + 1))
    return [prefix for prefix in prefixes if prefix in IMPORTS]
