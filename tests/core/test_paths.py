"""Safe paths: nothing escapes its root; private staging folders are 0700."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from core.errors import ConfigError
from core.paths import make_private_dir, remove_tree, safe_segment, within

REFUSED = {
    "dot-dot": ("..", "'..'"),
    "dot-dot-prefix": ("../x", "'..'"),
    "dot-dot-nested": ("a/../../x", "'..'"),
    "dot-dot-middle": ("a/../b", "'..'"),
    "absolute": ("/etc/passwd", "relative"),
    "absolute-root": ("/", "relative"),
    "space": ("a b", "safe file name"),
    "semicolon": ("a;b", "safe file name"),
    "dollar": ("$HOME", "safe file name"),
    "backtick": ("`id`", "safe file name"),
    "glob": ("a*", "safe file name"),
    "newline": ("a\nb", "safe file name"),
    "nul": ("a\x00b", "safe file name"),
    "non-ascii": ("café", "safe file name"),
    "leading-dot": (".hidden", "safe file name"),
    "leading-dash": ("-rf", "safe file name"),
    "double-dot-inside": ("a..b", "safe file name"),
    "backslash": ("a\\b", "safe file name"),
    "too-long": ("a" * 200, "safe file name"),
}


@pytest.mark.parametrize(("relative", "fragment"), REFUSED.values(), ids=REFUSED.keys())
def test_within_refuses(tmp_path: Path, relative: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        within(tmp_path, relative, "delivery.path")
    assert "delivery.path" in str(info.value)
    assert fragment in str(info.value)
    assert "Fix:" in str(info.value)


@pytest.mark.parametrize("relative", ["acme", "acme/inbound", "a.b_c-d", "A1", "acme/./x", ""],
                         ids=["plain", "nested", "punctuation", "upper", "dot-segment", "empty"])
def test_within_accepts(tmp_path: Path, relative: str) -> None:
    target = within(tmp_path, relative, "delivery.path")
    assert target == (tmp_path.resolve() / relative).resolve()
    assert target == tmp_path.resolve() or tmp_path.resolve() in target.parents


def test_within_refuses_symlink_escape(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    (root / "link").symlink_to(tmp_path)
    with pytest.raises(ConfigError, match="escapes"):
        within(root, "link/other", "delivery.path")


def test_within_accepts_path_objects(tmp_path: Path) -> None:
    assert within(tmp_path, Path("a/b"), "x") == tmp_path.resolve() / "a" / "b"


@pytest.mark.parametrize("value", ["C-DEMO-001_20261125T020000Z-1a2b3c4d.tar.age", "a", "x.y"],
                         ids=["package", "one-char", "dotted"])
def test_safe_segment_accepts(value: str) -> None:
    assert safe_segment(value, "name") == value


@pytest.mark.parametrize("value", ["", ".", "..", "a/b", "a..", ".a"], ids=["empty", "dot", "dot-dot", "slash",
                                                                           "trailing-dots", "hidden"])
def test_safe_segment_refuses(value: str) -> None:
    with pytest.raises(ConfigError):
        safe_segment(value, "name")


def test_make_private_dir_is_0700(tmp_path: Path) -> None:
    path = make_private_dir(tmp_path / "a" / "staging")
    assert path.is_dir()
    assert stat.S_IMODE(path.stat().st_mode) == 0o700


def test_make_private_dir_tightens_existing_folder(tmp_path: Path) -> None:
    path = tmp_path / "staging"
    path.mkdir()
    os.chmod(path, 0o755)
    make_private_dir(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o700


def test_make_private_dir_ignores_permissive_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        path = make_private_dir(tmp_path / "loose")
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o700


def test_remove_tree(tmp_path: Path) -> None:
    path = tmp_path / "t"
    (path / "x").mkdir(parents=True)
    (path / "x" / "f").write_text("x")
    remove_tree(path)
    assert not path.exists()
    remove_tree(path)  # missing is fine
