import pytest
import torch

from study.config import ModelConfig
from study.models import LeNet, forward_flops, n_params


def test_lenet5_parameter_count_by_hand():
    # conv1 1·6·25+6, bn1 2·6, conv2 6·16·25+16, bn2 2·16; the 48-pixel canvas leaves 16×9×9
    # features: fc 1296·120+120, 120·84+84, 84·10+10.
    expected = 156 + 12 + 2416 + 32 + 155_640 + 10_164 + 850
    assert n_params(LeNet(ModelConfig(), canvas=48)) == expected == 169_270


def test_attconv_at_conv1_adds_top_down_weights_and_bias():
    # W_td (25·6) and b_td (one per input channel) on top of the plain network.
    model = LeNet(ModelConfig(attention={"layers": [0]}), canvas=48)
    assert n_params(model) == 169_270 + 150 + 1


def test_first_linear_layer_is_sized_from_the_canvas():
    model = LeNet(ModelConfig(), canvas=28)  # 28 → 24 → 12 → 8 → 4: the classic LeNet-5 size
    assert model.classifier[1].in_features == 16 * 4 * 4


@pytest.mark.parametrize("layers", [[], [0], [1], [0, 1]])
@pytest.mark.parametrize("iterations", [1, 4])
def test_every_position_runs_forward_and_backward(layers, iterations):
    model = LeNet(ModelConfig(attention={"layers": layers, "iterations": iterations}), canvas=48)
    out = model(torch.rand(3, 1, 48, 48))
    assert out.shape == (3, 10)
    out.sum().backward()
    # With one iteration the top-down pass never reaches the output, so it gets no gradient.
    unused = {"weight_td", "bias_td"} if iterations == 1 else set()
    for name, p in model.named_parameters():
        assert (p.grad is None) == (name.rsplit(".", 1)[-1] in unused and bool(layers)), name


def test_flops_grow_with_attention_iterations():
    flops = [forward_flops(LeNet(ModelConfig(attention={"layers": [0], "iterations": t}), 48), 48)
             for t in (1, 2, 4)]
    plain = forward_flops(LeNet(ModelConfig(), 48), 48)
    # One iteration is one bottom-up product: exactly a convolution's cost.
    assert plain == flops[0] < flops[1] < flops[2]
