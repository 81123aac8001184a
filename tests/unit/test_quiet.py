"""Lightning's noise is silenced for a run only: nothing changes global state at import."""

from __future__ import annotations

import logging
import subprocess
import sys
import warnings

import pytest

from vaelab.training import quiet_lightning


def test_importing_vaelab_sets_no_warning_filter_and_no_environment_variable() -> None:
    code = (
        "import os, warnings, lightning, torch\n"
        "filters, env = list(warnings.filters), dict(os.environ)\n"
        "import vaelab, vaelab.lit, vaelab.train, vaelab.eval, vaelab.training\n"
        "assert list(warnings.filters) == filters, 'a warning filter was added at import'\n"
        "assert dict(os.environ) == env, 'the environment changed at import'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_quiet_lightning_silences_lightnings_noise_inside_only(
    caplog: pytest.LogCaptureFixture,
) -> None:
    leafspec = "`isinstance(treespec, LeafSpec)` is deprecated, use ..."
    tip = "💡 Tip: For seamless cloud logging and experiment tracking, try installing litlogger"
    log = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    filters = list(warnings.filters)
    with caplog.at_level(logging.INFO, logger=log.name):
        with quiet_lightning(), warnings.catch_warnings(record=True) as inside:
            warnings.warn(leafspec, FutureWarning, stacklevel=1)
            log.info(tip)
        assert inside == [] and tip not in caplog.text
        with pytest.warns(FutureWarning, match="LeafSpec"):
            warnings.warn(leafspec, FutureWarning, stacklevel=1)
        log.info(tip)
        assert tip in caplog.text
    assert list(warnings.filters) == filters
