"""PNG callbacks: grid shapes, content, the activity order of traversal rows, loggers, flows."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from PIL import Image
from torch import Tensor, nn
from torch.distributions import Independent, Normal

from tests.helpers.fake_data import write_fake_mnist
from vaelab.callbacks import ImageGrids
from vaelab.config import config_dir
from vaelab.viz import has_encoder, rank_latent_dims, sample_grid, traversal_grid

PAD = 2
TILE = 28 + PAD  # a 28x28 image plus the padding before it


def grid_size(rows: int, cols: int, side: int = 28, pad: int = PAD) -> tuple[int, int]:
    """(width, height) of a make_grid of rows x cols images of side x side pixels."""
    return cols * (side + pad) + pad, rows * (side + pad) + pad


def read_png(path: Path) -> np.ndarray:
    """(H, W) uint8: the first channel (grids of 1-channel images are grey RGB)."""
    img = np.asarray(Image.open(path).convert("RGB"))
    assert (img[..., 0] == img[..., 1]).all() and (img[..., 1] == img[..., 2]).all()
    return img[..., 0]


def tiles(img: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """(rows, cols, 28, 28) image contents of a grid, padding stripped."""
    return np.stack(
        [
            np.stack(
                [
                    img[PAD + r * TILE : r * TILE + TILE, PAD + c * TILE : c * TILE + TILE]
                    for c in range(cols)
                ]
            )
            for r in range(rows)
        ]
    )


# -- ranking -----------------------------------------------------------------------------------
def test_rank_latent_dims_orders_by_variance_of_posterior_means() -> None:
    g = torch.Generator().manual_seed(0)
    base = torch.randn(500, 5, generator=g, dtype=torch.float64)
    base = (base - base.mean(0)) / base.std(0, unbiased=False)  # unit population variance
    scales = torch.tensor([0.1, 3.0, 0.0, 1.0, 2.0], dtype=torch.float64)
    order, var = rank_latent_dims(base * scales + 7.0)  # an offset changes nothing
    assert order.tolist() == [1, 4, 3, 0, 2]
    torch.testing.assert_close(var, scales**2, atol=1e-9, rtol=1e-9)
    # ties keep the lower index first
    order, _ = rank_latent_dims(torch.tensor([[0.0, 1.0, 1.0], [0.0, -1.0, -1.0]]))
    assert order.tolist() == [1, 2, 0]
    with pytest.raises(ValueError, match="posterior means"):
        rank_latent_dims(torch.zeros(4))


class BandModel(nn.Module):
    """A latent model whose pictures can be read back: unit d of z paints band d of the image.

    ``E_q[z_d | x] = scale_d * (x[0, 7d, 0] - 0.5)`` (one pixel per unit), ``sigma = 1``;
    ``decode_mean(z)`` fills rows ``7d : 7d + 7`` with ``sigmoid(z_d)``.
    """

    def __init__(self, scales: list[float]) -> None:
        super().__init__()
        self.scales = nn.Parameter(torch.tensor(scales), requires_grad=False)
        self.latent_dim = len(scales)

    def encode(self, x: Tensor) -> Independent:
        idx = torch.arange(self.latent_dim) * 7
        mu = self.scales * (x[:, 0, idx, 0] - 0.5)  # (B, D)
        return Independent(Normal(mu, torch.ones_like(mu)), 1)

    def decode_mean(self, z: Tensor) -> Tensor:
        img = torch.zeros(z.shape[0], 1, 28, 28)
        for d in range(self.latent_dim):
            img[:, 0, 7 * d : 7 * d + 7, :] = torch.sigmoid(z[:, d])[:, None, None]
        return img

    def sample(self, n: int, use_mean: bool = False) -> Tensor:
        return self.decode_mean(torch.randn(n, self.latent_dim))


def test_traversal_rows_are_ordered_by_activity(tmp_path: Path) -> None:
    """Row r of the PNG moves exactly one band: the one of the r-th most active unit."""
    model = BandModel([0.5, 0.0, 2.0, 1.0])  # activities 0.25 Var, 0, 4 Var, 1 Var
    x = torch.rand(300, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    grid, dims = traversal_grid(model, x, num_dims=4, steps=7, span=3.0)
    assert dims.tolist() == [2, 3, 0, 1]
    path = tmp_path / "traversals.png"
    from torchvision.utils import save_image

    save_image(grid, path)
    img = read_png(path)
    assert img.shape[::-1] == grid_size(4, 7)
    t = tiles(img, 4, 7).astype(float)  # (row, step, 28, 28)
    for r, d in enumerate([2, 3, 0, 1]):
        band_range = [
            np.ptp(t[r, :, 7 * b : 7 * b + 7, :].mean(axis=(1, 2))) for b in range(4)
        ]  # how much each band changes along the row
        assert int(np.argmax(band_range)) == d, (r, band_range)
        assert band_range[d] > 100  # +-3 std moves sigmoid(z_d) across most of [0, 1]
        assert sorted(band_range)[-2] == 0  # the other bands stay fixed
        # monotone: the traversal runs from -span to +span
        assert np.all(np.diff(t[r, :, 7 * d + 3, 14]) >= 0)


def test_traversal_centers_on_the_reference_image_or_zero() -> None:
    model = BandModel([1.0, 1.0])
    x = torch.rand(50, 1, 28, 28, generator=torch.Generator().manual_seed(2))
    x[0, 0, 0, 0], x[0, 0, 7, 0] = 1.0, 1.0  # z0 = (0.5, 0.5)
    grid, _ = traversal_grid(model, x, num_dims=2, steps=3, span=1.0, center="image", padding=0)
    mid = grid[0, 0:28, 28:56]  # row 0, middle step: the reference image itself
    assert mid[0, 0].item() == pytest.approx(torch.sigmoid(torch.tensor(0.5)).item(), abs=1e-6)
    grid, _ = traversal_grid(model, x, num_dims=2, steps=3, span=1.0, center="zero", padding=0)
    assert grid[0, 0:28, 28:56][0, 0].item() == pytest.approx(0.5, abs=1e-6)


# -- the callback on a real VAE, through vaelab.train -------------------------------------------
@pytest.fixture(scope="module")
def trained_run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Two tiny epochs of the default VAE config on fake MNIST, with TensorBoard attached."""
    from vaelab.train import train

    root = tmp_path_factory.mktemp("images")
    data = write_fake_mnist(root / "data", n_train=120, n_test=40)
    out = root / "run"
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose(
            "train",
            overrides=[
                f"paths.data_dir={data}",
                f"paths.output_dir={out}",
                "logger=tensorboard",
                "data.download=false",
                "data.val_size=20",
                "data.batch_size=10",
                "data.eval_batch_size=20",
                "model.latent_dim=4",
                "model.encoder.net.hidden=[32]",
                "trainer.max_epochs=2",
                "++trainer.limit_train_batches=3",
                "trainer.accelerator=cpu",
                "++trainer.enable_progress_bar=false",
                "eval.num_samples=2",
                "eval.val_num_samples=1",
                "callbacks.images.every_n_epochs=1",
                "~callbacks.model_summary",
            ],
        )
    _, objects = train(cfg)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = list((out / "tensorboard").rglob("events.out.tfevents.*"))
    assert events
    acc = EventAccumulator(str(events[0].parent), size_guidance={"images": 0})
    acc.Reload()
    return {"out": out, "objects": objects, "cfg": cfg, "tensorboard": acc}


def test_callback_writes_pngs_of_the_right_shape(trained_run: dict) -> None:
    images = trained_run["out"] / "images"
    names = sorted(p.name for p in images.glob("*.png"))
    expected = sorted(
        f"{pic}_{tag}.png"
        for pic in ("samples", "reconstructions", "traversals", "interpolations")
        for tag in ("epoch000", "epoch001", "final")
    )
    assert names == expected
    # the last epoch showed the final weights already: its files are reused, byte for byte
    for pic in ("samples", "traversals"):
        final = (images / f"{pic}_final.png").read_bytes()
        assert final == (images / f"{pic}_epoch001.png").read_bytes()
        assert final != (images / f"{pic}_epoch000.png").read_bytes()
    # (rows, cols) of each grid: 64 samples in rows of 8; 32 inputs + 32 reconstructions in rows
    # of 8; one traversal row per latent unit (4) of 11 steps; 8 pairs of 10 steps + 2 endpoints.
    shapes = {
        "samples": (8, 8),
        "reconstructions": (8, 8),
        "traversals": (4, 11),
        "interpolations": (8, 12),
    }
    for pic, (rows, cols) in shapes.items():
        img = read_png(images / f"{pic}_final.png")
        assert img.shape[::-1] == grid_size(rows, cols), pic
        t = tiles(img, rows, cols).astype(float)
        assert t.std() > 5, pic  # not a constant picture
        assert (t.std(axis=(2, 3)) > 1).mean() > 0.9, pic  # nearly every tile has content
        assert (img[:PAD] == 0).all() and (img[:, :PAD] == 0).all(), pic  # padding is black


def test_reconstruction_rows_alternate_inputs_and_outputs(trained_run: dict) -> None:
    dm = trained_run["objects"]["datamodule"]
    x = dm.batch("test", 32)  # the fixed images: the first 32 test images, eval-transformed
    t = tiles(read_png(trained_run["out"] / "images" / "reconstructions_final.png"), 8, 8)
    inputs = t[0::2].reshape(32, 28, 28)
    expected = (x[:, 0] * 255 + 0.5).clamp(0, 255).to(torch.uint8).numpy()
    np.testing.assert_array_equal(inputs, expected)
    outputs = t[1::2].reshape(32, 28, 28).astype(float)
    assert not np.array_equal(outputs, inputs)  # decoder means, grey values
    assert len(np.unique(outputs)) > 50


def test_samples_use_a_fixed_seed_and_leave_the_training_state_alone(trained_run: dict) -> None:
    objects = trained_run["objects"]
    module, trainer = objects["module"], objects["trainer"]
    cb = next(c for c in objects["callbacks"] if isinstance(c, ImageGrids))
    module.train()
    state = torch.get_rng_state()
    params = [p.detach().clone() for p in module.parameters()]
    paths = cb.write(trainer, module, "again")
    assert module.training  # train mode restored
    assert torch.equal(torch.get_rng_state(), state)  # training RNG stream untouched
    assert all(torch.equal(a, b) for a, b in zip(params, module.parameters()))
    assert len(paths) == 4
    # same seed, same weights: the sample grid is identical to the one written at the end of fit
    images = trained_run["out"] / "images"
    np.testing.assert_array_equal(
        read_png(images / "samples_again.png"), read_png(images / "samples_final.png")
    )
    # and it differs from epoch 0's (the weights changed, not the noise)
    assert not np.array_equal(
        read_png(images / "samples_epoch000.png"), read_png(images / "samples_final.png")
    )


def test_grids_go_to_tensorboard(trained_run: dict) -> None:
    acc = trained_run["tensorboard"]  # read right after fit, before other tests write again
    tags = set(acc.Tags()["images"])
    pictures = ("samples", "reconstructions", "traversals", "interpolations")
    assert tags >= {f"images/{p}" for p in pictures}
    samples = acc.Images("images/samples")
    # epochs 0 and 1 (3 steps each); *_final.png repeats epoch 1's weights, so it is not re-logged
    assert [s.step for s in samples] == [3, 6]
    assert (samples[-1].width, samples[-1].height) == grid_size(8, 8)


# -- models without an encoder ------------------------------------------------------------------
class SamplesOnly(nn.Module):
    """A flow-like model: ``sample(n, temperature)`` and an ``encode`` that is not a posterior."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.ones(()))

    def sample(self, n: int, temperature: float = 1.0) -> Tensor:
        return (0.5 + 0.2 * temperature * torch.randn(n, 1, 28, 28)).clamp(0, 1)

    def encode(self, x: Tensor) -> Tensor:
        return x.flatten(1)


def test_models_without_decode_mean_get_samples_only() -> None:
    model = SamplesOnly()
    assert not has_encoder(model) and has_encoder(BandModel([1.0]))
    cb = ImageGrids(num_samples=16, nrow=4, temperature=0.5)
    grids = cb.draw(model, trainer=None)
    assert set(grids) == {"samples"}
    assert tuple(grids["samples"].shape) == (3, *grid_size(4, 4)[::-1])
    # the temperature reaches the model: a colder draw has a smaller spread
    cold = sample_grid(model, 16, 4, seed=0, temperature=0.1)
    hot = sample_grid(model, 16, 4, seed=0, temperature=1.0)
    assert cold.std() < hot.std()


def test_unknown_picture_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="unknown pictures"):
        ImageGrids(pictures=["samples", "traversal"])


def test_only_rank_zero_writes(tmp_path: Path) -> None:
    class Rank1:
        is_global_zero = False

    cb = ImageGrids(dirpath=tmp_path / "images")
    module = L.LightningModule()
    assert cb.write(Rank1(), module, "x") == []  # type: ignore[arg-type]
    assert not (tmp_path / "images").exists()
