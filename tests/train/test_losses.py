"""The fused output-projection + cross-entropy loss equals the plain one, value and gradients."""

import pytest
import torch
import torch.nn.functional as F

from jielong.train.losses import linear_cross_entropy


@pytest.mark.parametrize("chunk", [7, 1024])
def test_fused_loss_and_grads_equal_plain_cross_entropy(chunk):
    torch.manual_seed(0)
    h = torch.randn(3, 11, 16, requires_grad=True)
    w = torch.randn(50, 16, requires_grad=True)
    t = torch.randint(0, 50, (3, 11))
    t[0, :4] = -100  # ignored positions
    ref = F.cross_entropy((h @ w.T).flatten(0, 1), t.flatten())
    gh, gw = torch.autograd.grad(ref * 2.5, (h, w))
    ours = linear_cross_entropy(h, w, t, chunk=chunk)
    oh, ow = torch.autograd.grad(ours * 2.5, (h, w))
    assert torch.allclose(ours, ref, atol=1e-5)
    assert torch.allclose(oh, gh, atol=1e-5) and torch.allclose(ow, gw, atol=1e-5)


def test_no_grad_path_gives_the_same_value():
    torch.manual_seed(1)
    h, w, t = torch.randn(20, 8), torch.randn(30, 8), torch.randint(0, 30, (20,))
    with torch.no_grad():
        assert torch.allclose(linear_cross_entropy(h, w, t), F.cross_entropy(h @ w.T, t), atol=1e-5)
