"""Issue 26 case 11: L_k's memory is bounded whatever k is, and a bad k is refused by name."""

from __future__ import annotations

import weakref

import pytest
import torch
from torch import Tensor

from vaelab.objectives import importance_weighted_bound, iwae_bound


class CountsLiveChunks:
    """A model whose log weights are fresh tensors; records how many earlier ones are alive."""

    def __init__(self, log_w: Tensor | None = None) -> None:
        self.log_w, self.used = log_w, 0
        self.refs: list[weakref.ref] = []
        self.most_alive = 0

    def encode(self, x: Tensor) -> None:
        return None

    def log_weights(self, x: Tensor, num_samples: int, posterior: object = None) -> Tensor:
        self.most_alive = max(self.most_alive, sum(r() is not None for r in self.refs))
        if self.log_w is None:
            rows = torch.randn(num_samples, x.shape[0]) - 100.0
        else:
            rows = self.log_w[self.used : self.used + num_samples].clone()
        self.used += num_samples
        self.refs.append(weakref.ref(rows))
        return rows


def test_lk_memory_stays_one_chunk_whatever_k() -> None:
    # Before: every chunk's (c, B) log weights were kept for one log-sum-exp at the end:
    # eval.num_samples=100000000 grew to 17 GB. Here k * B = 5e6 > LOG_WEIGHTS_KEPT (4.2e6):
    # 1221 chunks of 4096 rows; before, all 1220 earlier ones were alive at the last call.
    model = CountsLiveChunks()
    x = torch.zeros(1, 4)
    bound = importance_weighted_bound(model, x, 5_000_000)
    assert model.used == 5_000_000 and len(model.refs) == 1221
    assert model.most_alive <= 1, model.most_alive
    assert bound.dtype == torch.float32 and torch.isfinite(bound).all()


def test_streamed_lk_equals_one_log_sum_exp(monkeypatch: pytest.MonkeyPatch) -> None:
    import vaelab.objectives as likelihood

    k, b = 257, 10
    log_w = torch.randn(k, b, generator=torch.Generator().manual_seed(3)) * 30 - 200
    whole = iwae_bound(log_w, 0)
    monkeypatch.setattr(likelihood, "LOG_WEIGHTS_KEPT", 0)  # stream even this small k
    streamed = importance_weighted_bound(CountsLiveChunks(log_w), torch.zeros(b, 4), k, rows=3 * b)
    # float64 running sum against float32's one log-sum-exp: equal to float32's precision.
    torch.testing.assert_close(streamed, whole, atol=0, rtol=1e-6)
    exact = iwae_bound(log_w.double(), 0)
    torch.testing.assert_close(streamed.double(), exact, atol=1e-5, rtol=0)


@pytest.mark.parametrize("bad", [-1, 2.5, "abc"])
def test_a_module_refuses_a_bad_k_naming_the_key(bad: object) -> None:
    from vaelab.lit import GenerativeModule

    with pytest.raises(ValueError, match=r"eval\.num_samples=.*must be an integer >= 0"):
        GenerativeModule(torch.nn.Linear(1, 1), data_kind="binary", test_num_samples=bad)
    # 0 is allowed in training: no L_k at test (the AEVB figure's protocol).
    assert GenerativeModule(torch.nn.Linear(1, 1), data_kind="binary", test_num_samples=0)
