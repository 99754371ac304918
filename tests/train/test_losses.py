"""The fused output-projection + cross-entropy loss and the chunked token log-probs equal the
plain ones, value and gradients."""

import pytest
import torch
import torch.nn.functional as F

from jielong.train.losses import linear_cross_entropy, token_logps


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


@pytest.mark.parametrize("temperature", [1.0, 0.7])
@pytest.mark.parametrize("chunk", [5, 1024])
@pytest.mark.parametrize("head_trained", [False, True])
def test_token_logps_and_grads_equal_plain_log_softmax(temperature, chunk, head_trained):
    torch.manual_seed(2)
    h = torch.randn(23, 16, requires_grad=True)
    w = torch.randn(40, 16, requires_grad=head_trained)
    t = torch.randint(0, 40, (23,))
    g = torch.randn(23)  # an arbitrary upstream gradient per token
    ref = ((h @ w.T) / temperature).log_softmax(-1).gather(1, t[:, None])[:, 0]
    ours = token_logps(h, w, t, temperature, chunk=chunk)
    assert ours.dtype == torch.float32 and torch.allclose(ours, ref, atol=1e-5)
    wrt = (h, w) if head_trained else (h,)
    for a, b in zip(torch.autograd.grad((ours * g).sum(), wrt), torch.autograd.grad((ref * g).sum(), wrt),
                    strict=True):
        assert torch.allclose(a, b, atol=1e-5)
    with torch.no_grad():  # a reference or sampling pass: the same values, no graph
        plain = token_logps(h, w, t, temperature, chunk=chunk)
    assert torch.equal(plain, ours.detach()) and plain.grad_fn is None
    assert token_logps(h[:0], w, t[:0]).shape == (0,)
