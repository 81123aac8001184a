"""The notebooks run, top to bottom, on tiny settings (``VAELAB_NOTEBOOK_TINY=1``) with nbclient.

The kernel is the ``python3`` kernelspec. ipykernel's own spec (installed into the venv by
``python -m ipykernel install --sys-prefix --name python3``, as ``make install`` does, or shipped
in ipykernel's wheel) launches ``python``, which jupyter_client replaces by the launching
interpreter, so the kernel is this venv's Python; a test checks that (a kernelspec pointing at
another interpreter would run the notebooks against another vaelab, or none).

Data: the real MNIST where present (``VAELAB_DATA_DIR`` or ``../shared/data``), else a tiny fake
MNIST in the real IDX format (``tests.helpers.fake_data.write_fake_mnist``).
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from tests.conftest import real_mnist_dir
from tests.helpers.fake_data import write_fake_mnist

REPO = Path(__file__).resolve().parents[2]
NOTEBOOKS = REPO / "notebooks"
NAMES = ("01_quickstart", "02_latent_space")

CHECK_KERNEL = "import sys\nprint('KERNEL_PREFIX=' + sys.prefix)"


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    real = real_mnist_dir()
    if real is not None:
        return real
    return write_fake_mnist(tmp_path_factory.mktemp("nb_data"), n_train=300, n_test=200)


def run_notebook(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, data: Path, **env: str
) -> tuple[nbformat.NotebookNode, Path]:
    """Execute ``notebooks/<name>.ipynb`` in ``tmp_path`` with the tiny settings; returns the
    executed notebook (with one extra cell at the end that prints the kernel's ``sys.prefix``)
    and the output folder."""
    out = tmp_path / "out"
    monkeypatch.setenv("VAELAB_NOTEBOOK_TINY", "1")
    monkeypatch.setenv("VAELAB_DATA_DIR", str(data))
    monkeypatch.setenv("VAELAB_NOTEBOOK_OUT", str(out))
    monkeypatch.setenv("PYDEVD_DISABLE_FILE_VALIDATION", "1")
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    nb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell(CHECK_KERNEL))
    client = NotebookClient(
        nb,
        kernel_name="python3",
        timeout=600,
        resources={"metadata": {"path": str(tmp_path)}},  # the kernel's working directory
    )
    client.execute()
    return nb, out / name


def text_of(nb: nbformat.NotebookNode) -> str:
    parts = []
    for cell in nb.cells:
        for o in cell.get("outputs", []):
            if o.get("output_type") == "stream":
                parts.append(o["text"])
            elif "data" in o and "text/plain" in o["data"]:
                parts.append(o["data"]["text/plain"])
    return "".join(parts)


def count_pngs(nb: nbformat.NotebookNode) -> int:
    return sum("image/png" in o.get("data", {}) for c in nb.cells for o in c.get("outputs", []))


@pytest.mark.parametrize("name", NAMES)
def test_committed_notebooks_are_stripped(name: str) -> None:
    nb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    nbformat.validate(nb)
    assert nb.metadata.kernelspec.name == "python3"
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code
    for cell in code:
        assert cell.outputs == [] and cell.execution_count is None, "strip outputs before commit"
    source = "\n".join(c.source for c in code)
    assert "VAELAB_NOTEBOOK_TINY" in source and "VAELAB_DATA_DIR" in source


def test_quickstart_trains_and_shows_samples(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, data_dir: Path
) -> None:
    nb, out = run_notebook("01_quickstart", tmp_path, monkeypatch, data_dir)
    text = text_of(nb)
    assert f"KERNEL_PREFIX={sys.prefix}" in text  # the venv's interpreter ran the notebook
    assert count_pngs(nb) >= 2  # the sample grid and the reconstructions PNG
    metrics = json.loads((out / "metrics.json").read_text())
    nll = metrics["test/nll"]
    assert math.isfinite(nll) and 0 < nll < 784 * math.log(2) * 1.5  # nats, sane range
    assert (out / "images" / "samples_final.png").is_file()
    assert (out / "checkpoints" / "last.ckpt").is_file()


def test_latent_space_trains_a_2d_vae_and_maps_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, data_dir: Path
) -> None:
    monkeypatch.delenv("VAELAB_CHECKPOINT", raising=False)
    nb, out = run_notebook("02_latent_space", tmp_path, monkeypatch, data_dir)
    text = text_of(nb)
    assert f"KERNEL_PREFIX={sys.prefix}" in text
    assert "VAE with latent_dim=2" in text
    assert (out / "train" / "checkpoints" / "last.ckpt").is_file()
    assert (out / "latent_map.png").stat().st_size > 1000
    assert count_pngs(nb) >= 4  # traversals, interpolations, latent map, decoded manifold


def test_the_readme_command_with_a_relative_checkpoint_works(
    tmp_path: Path, data_dir: Path
) -> None:
    # Issue 11. The docs' `VAELAB_CHECKPOINT=logs/.../last.ckpt jupyter execute
    # notebooks/02_latent_space.ipynb`, typed at the repository root: the kernel runs in
    # notebooks/, where the relative path used to be read from (and "did not exist").
    import os
    import subprocess

    from tests.conftest import compose_train
    from vaelab.train import train

    cfg = compose_train(
        ["model.latent_dim=2", "test=false", "~callbacks.images", "data.download=false"],
        tmp_path,
        data_dir,
    )
    train(cfg)
    ckpt = os.path.relpath(tmp_path / "run" / "checkpoints" / "last.ckpt", REPO)
    env = {
        **os.environ,
        "VAELAB_CHECKPOINT": ckpt,
        "VAELAB_NOTEBOOK_TINY": "1",
        "VAELAB_DATA_DIR": str(data_dir),
        "VAELAB_NOTEBOOK_OUT": str(tmp_path / "out"),
        "PYDEVD_DISABLE_FILE_VALIDATION": "1",
        "PWD": str(REPO),
    }
    jupyter = Path(sys.executable).parent / "jupyter"
    proc = subprocess.run(
        [str(jupyter), "execute", "notebooks/02_latent_space.ipynb"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "out" / "02_latent_space" / "latent_map.png").stat().st_size > 1000
