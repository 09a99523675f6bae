import pytest
import torch

from sgem.models import SGEM, UNet, create_model, list_models, pad_to_multiple
from sgem.paper import REFERENCE_COMPLEXITY
from sgem.profiling import count_macs, count_params

PAPER_PARAMS = 8.69e6
PAPER_MACS = 15.92e9


def test_registry_lists_paper_model_and_ablation():
    assert {"sgem_unet", "unet"} <= set(list_models())


def test_unknown_model_names_the_registered_ones():
    with pytest.raises(KeyError, match="sgem_unet"):
        create_model("no_such_model")


def test_unknown_kwarg_names_the_model():
    with pytest.raises(TypeError, match="sgem_unet"):
        create_model("sgem_unet", no_such_argument=1)


@pytest.mark.parametrize("name", list_models())
def test_forward_backward_every_parameter_gets_a_gradient(name):
    model = create_model(name)
    model.train()
    x = torch.randn(2, model.in_channels, 64, 64)
    y = model(x)
    outputs = y if isinstance(y, (list, tuple)) else [y]  # deep supervision returns every head in training
    assert all(o.shape == (2, 1, 64, 64) for o in outputs)
    sum(o.float().pow(2).mean() for o in outputs).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, f"{name}: parameters without gradient: {missing}"
    bad = [n for n, p in model.named_parameters() if not torch.isfinite(p.grad).all()]
    assert not bad, f"{name}: non-finite gradients in {bad}"
    # a convolution's bias that feeds a BatchNorm has a true gradient of exactly 0 (the
    # normalisation removes any constant shift); what is computed for it is rounding noise,
    # exactly 0 on one thread. Every other parameter must get a non-zero gradient.
    modules = dict(model.named_modules())
    conv_bias = {n for n, _ in model.named_parameters()
                 if n.endswith(".bias") and isinstance(modules.get(n.rsplit(".", 1)[0]), torch.nn.Conv2d)}
    zero = [n for n, p in model.named_parameters() if p.grad.abs().sum() == 0 and n not in conv_bias]
    assert not zero, f"{name}: all-zero gradients in {zero}"


@pytest.mark.parametrize("name", list_models())
def test_non_square_input(name):
    model = create_model(name).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 1, 64, 96)).shape == (1, 1, 64, 96)


def test_every_registered_model_has_a_reference_complexity():
    assert set(list_models()) - {"unet"} <= set(REFERENCE_COMPLEXITY)


@pytest.mark.parametrize("name", sorted(REFERENCE_COMPLEXITY))
def test_complexity_matches_the_reference(name):
    ref = REFERENCE_COMPLEXITY[name]
    model = create_model(name, in_channels=ref["in_channels"])
    params = count_params(model)
    macs = count_macs(model, (ref["in_channels"], 256, 256), functional=False, transposed=ref["transposed"])
    assert abs(params / (ref["params_m"] * 1e6) - 1) < 0.03, params
    assert abs(macs / (ref["gmacs"] * 1e9) - 1) < 0.03, macs


def test_sgem_unet_complexity_matches_paper():
    model = create_model("sgem_unet")
    params = count_params(model)
    macs = count_macs(model, (1, 256, 256), functional=False)
    assert abs(params / PAPER_PARAMS - 1) < 0.03, params
    assert abs(macs / PAPER_MACS - 1) < 0.03, macs
    # the full count sees the attention's matrix products, the module count does not
    full = count_macs(model, (1, 256, 256), functional=True)
    assert full > macs


def test_ablation_differs_only_in_decoder_stage_2():
    a, b = create_model("sgem_unet"), create_model("unet")
    assert isinstance(a.dec2, SGEM) and not isinstance(b.dec2, SGEM)
    for stage in ("enc1", "enc2", "enc3", "enc4", "enc5", "dec1", "dec3", "dec4", "head"):
        assert count_params(getattr(a, stage)) == count_params(getattr(b, stage)), stage
    # and every stage, decoder stage 2 included, gives the same output shapes
    shapes = {}
    for tag, m in (("a", a), ("b", b)):
        hooks = [getattr(m, st).register_forward_hook(
            lambda mod, i, o, st=st, tag=tag: shapes.__setitem__((tag, st), tuple(o.shape)))
            for st in ("enc1", "enc2", "enc3", "enc4", "enc5", "dec1", "dec2", "dec3", "dec4", "head")]
        m.eval()(torch.randn(1, 1, 64, 64))
        for h in hooks:
            h.remove()
    assert len(shapes) == 20
    assert all(shapes[("a", st)] == shapes[("b", st)] for _, st in shapes), shapes


@pytest.mark.parametrize("name", list_models())
@pytest.mark.parametrize("h,w", [(250, 256), (256, 100), (30, 30)])
def test_bad_size_says_what_would_work(name, h, w):
    model = create_model(name)
    with pytest.raises(ValueError, match=rf"multiples of {model.size_multiple}.*Pad to"):
        model(torch.randn(1, 1, h, w))


def test_wrong_channel_count_is_explained():
    model = create_model("sgem_unet", in_channels=1)
    with pytest.raises(ValueError, match="1 input channel"):
        model(torch.randn(1, 3, 64, 64))


def test_pad_to_multiple_round_trip():
    x = torch.randn(1, 1, 250, 37)
    padded, (h, w) = pad_to_multiple(x, 16)
    assert padded.shape[-2:] == (256, 48)
    assert torch.equal(padded[..., :h, :w], x)
    model = create_model("unet").eval()
    with torch.no_grad():
        assert model(padded)[..., :h, :w].shape == (1, 1, 250, 37)


def test_sgem_matrix_is_a_probability_distribution():
    sgem = SGEM(enc_channels=16, dec_channels=32, out_channels=16, dim=32, heads=4)
    e3, d1 = torch.randn(2, 16, 24, 20), torch.randn(2, 32, 12, 10)
    m = sgem.attention_matrix(e3, d1)
    assert m.shape == (2, 4, 8, 8)
    assert (m >= 0).all() and (m <= 1).all()
    torch.testing.assert_close(m.sum(-1), torch.ones(2, 4, 8))
    assert sgem(e3, d1).shape == (2, 16, 24, 20)


def test_sgem_uses_decoder_features():
    """The SGEM output must depend on D1 (the deep features it is meant to transmit)."""
    sgem = SGEM(16, 32, 16, dim=32, heads=4).eval()
    e3 = torch.randn(1, 16, 16, 16)
    with torch.no_grad():
        a = sgem(e3, torch.randn(1, 32, 8, 8))
        b = sgem(e3, torch.randn(1, 32, 8, 8))
    assert not torch.allclose(a, b)


def test_sgem_rejects_indivisible_heads():
    with pytest.raises(ValueError, match="divisible"):
        SGEM(16, 32, 16, dim=30, heads=4)


def test_unet_rejects_bad_widths():
    with pytest.raises(ValueError, match="5 encoder widths"):
        UNet(widths=(8, 16, 32))


def test_torch_export_matches_eager():
    model = create_model("sgem_unet", widths=(8, 16, 32, 64, 128), sgem_dim=64).eval()
    x = torch.randn(1, 1, 64, 64)
    exported = torch.export.export(model, (x,))
    with torch.no_grad():
        torch.testing.assert_close(exported.module()(x), model(x))


def test_deformable_convolution_with_zero_offsets_is_a_convolution():
    from sgem.models.isnet import DeformConv2d

    d = DeformConv2d(4, 5, (3, 3), (1, 1))
    x = torch.randn(2, 4, 9, 7)
    torch.testing.assert_close(d(x), torch.nn.functional.conv2d(x, d.weight, d.bias, padding=1), atol=1e-5, rtol=1e-5)


def test_deformable_convolution_follows_its_offsets():
    from sgem.models.isnet import DeformConv2d

    d = DeformConv2d(1, 1, (1, 1), (0, 0), bias=False)
    with torch.no_grad():
        d.weight.fill_(1.0)
        d.conv_offset.bias.copy_(torch.tensor([0.0, 1.0]))  # every sample one pixel to the right
    x = torch.arange(12.0).view(1, 1, 3, 4)
    expected = torch.cat([x[..., 1:], torch.zeros(1, 1, 3, 1)], dim=-1)  # outside the image: 0
    torch.testing.assert_close(d(x), expected)
    d(x).sum().backward()
    assert d.conv_offset.bias.grad is not None


def test_isnet_trains_on_prediction_and_edges():
    from sgem.losses import SoftIoULoss
    from sgem.models.isnet import mask_boundary

    mask = torch.zeros(1, 1, 8, 8)
    mask[0, 0, 2:6, 2:6] = 1
    boundary = mask_boundary(mask)
    assert boundary.sum() == 12 and boundary[0, 0, 3:5, 3:5].sum() == 0  # the ring, not the inside
    model = create_model("isnet", widths=(4, 8, 16, 32)).train()
    pred, edge = model(torch.randn(2, 1, 32, 32))
    target = torch.zeros(2, 1, 32, 32)
    target[:, :, 10:14, 10:14] = 1
    loss = model.training_loss((pred, edge), target, SoftIoULoss())
    loss.backward()
    assert torch.isfinite(loss) and model.edge.weight.grad.abs().sum() > 0
