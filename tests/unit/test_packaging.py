"""The wheel's package list in pyproject.toml matches the source tree (src/vaelab and conf/)."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_pyproject_lists_every_package_and_config_folder():
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    code = {
        ".".join(p.parent.relative_to(ROOT / "src").parts)
        for p in (ROOT / "src" / "vaelab").rglob("__init__.py")
    }
    conf = {"vaelab.conf"} | {
        "vaelab.conf." + ".".join(d.relative_to(ROOT / "conf").parts)
        for d in (ROOT / "conf").rglob("*")
        if d.is_dir() and any(d.glob("*.yaml"))
    }
    missing, extra = (code | conf) - listed, listed - (code | conf)
    assert not missing, f"add to [tool.setuptools] packages in pyproject.toml: {sorted(missing)}"
    assert not extra, f"remove from [tool.setuptools] packages in pyproject.toml: {sorted(extra)}"


def test_config_dir_is_the_top_level_conf():
    from vaelab.config import config_dir

    assert Path(config_dir()) == ROOT / "conf"
