"""engine.atomic is the one atomic-write helper: no other engine module renames a file into place,
and a write that fails leaves the old file as it was."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

from engine.atomic import write_atomic, write_with

ENGINE = Path(__file__).resolve().parents[2] / "engine"
# renames that are not file writes: publishing a finished checkpoint folder, setting a damaged one aside
FOLDER_RENAMES = {"rundir.py"}


def _renames(tree: ast.AST) -> list[int]:
    """Lines calling os.replace/os.rename, or a one-argument .replace()/.rename() (Path's; str.replace takes two)."""
    lines = []
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
            continue
        name, owner = node.func.attr, node.func.value
        if name in ("replace", "rename") and (
            (isinstance(owner, ast.Name) and owner.id == "os") or len(node.args) + len(node.keywords) == 1
        ):
            lines.append(node.lineno)
    return lines


def test_only_the_helper_renames_files_into_place():
    found = {}
    for path in sorted(ENGINE.rglob("*.py")):
        rel = path.relative_to(ENGINE).as_posix()
        if rel in ("atomic.py", *FOLDER_RENAMES):
            continue
        lines = _renames(ast.parse(path.read_text(), filename=str(path)))
        if lines:
            found[rel] = lines
    assert found == {}, f"write these files with engine.atomic.write_atomic / write_with instead: {found}"


def test_a_failed_write_keeps_the_old_file(tmp_path):
    target = write_atomic(tmp_path / "report.json", "old\n")

    def half_then_fail(tmp: Path) -> None:
        tmp.write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_with(target, half_then_fail)
    assert target.read_text() == "old\n" and [p.name for p in tmp_path.iterdir()] == ["report.json"]


def test_the_config_and_the_scan_report_are_written_atomically(tmp_path, monkeypatch):
    from engine.data.check import ScanReport, summarize
    from engine.train.config import TrainConfig

    written = []
    import engine.atomic as atomic

    real = atomic.os.replace
    monkeypatch.setattr(atomic.os, "replace", lambda src, dst: (written.append(Path(dst).name), real(src, dst)))
    TrainConfig().save(tmp_path / "config.toml")
    ScanReport([], summarize([])).write(tmp_path / "report.json")
    assert written == ["config.toml", "report.json"]
    assert TrainConfig.from_toml(tmp_path / "config.toml") == TrainConfig()
