import pytest
import torch

from study.models import LeNet, forward_flops, n_params
from study.sections import ModelConfig


def test_lenet5_parameter_count_by_hand():
    # conv1 1·6·25+6, bn1 2·6, conv2 6·16·25+16, bn2 2·16; the 48-pixel canvas leaves 16×9×9
    # features: fc 1296·120+120, 120·84+84, 84·10+10.
    expected = 156 + 12 + 2416 + 32 + 155_640 + 10_164 + 850
    assert n_params(LeNet(ModelConfig(), canvas=48)) == expected == 169_270


def test_attconv_at_conv1_adds_top_down_weights_only():
    # W_td (25·6) on top of the plain network; the original's b_td is left out (inert).
    model = LeNet(ModelConfig(attention={"layers": [0]}), canvas=48)
    assert n_params(model) == 169_270 + 150


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
    unused = {"weight_td"} if iterations == 1 else set()
    for name, p in model.named_parameters():
        assert (p.grad is None) == (name.rsplit(".", 1)[-1] in unused and bool(layers)), name


def test_flops_grow_with_attention_iterations():
    flops = [forward_flops(LeNet(ModelConfig(attention={"layers": [0], "iterations": t}), 48), 48)
             for t in (1, 2, 4)]
    plain = forward_flops(LeNet(ModelConfig(), 48), 48)
    # One iteration is one bottom-up product: exactly a convolution's cost.
    assert plain == flops[0] < flops[1] < flops[2]


def test_deeper_stack_parameter_count_by_hand():
    # conv 1·6·25+6, 6·16·25+16, 16·32·25+32 with batch norm 2·(6+16+32); 48 → 22 → 9 → 2 leaves
    # 32×2×2 features: fc 128·120+120, 120·84+84, 84·10+10.
    plain = 156 + 2416 + 12_832 + 2 * (6 + 16 + 32) + 15_480 + 10_164 + 850
    config = ModelConfig(channels=[6, 16, 32])
    assert n_params(LeNet(config, canvas=48)) == plain == 42_006
    # Each AttConv adds W_td, as large as W_bu.
    attentional = ModelConfig(channels=[6, 16, 32], attention={"layers": [0, 1, 2]})
    assert n_params(LeNet(attentional, canvas=48)) == plain + 150 + 2400 + 12_800


def test_iterations_and_relu_option_reach_each_layer():
    config = ModelConfig(channels=[6, 16, 32],
                         attention={"layers": [2, 0], "iterations": [16, 1], "relu_inside": True})
    model = LeNet(config, canvas=48)
    layers = {i: stage[0] for i, stage in enumerate(model.features)}
    assert (layers[0].iterations, layers[2].iterations) == (1, 16)
    assert layers[0].relu_inside and layers[2].relu_inside
    assert isinstance(layers[1], torch.nn.Conv2d)
    model(torch.rand(2, 1, 48, 48)).sum().backward()


def test_a_baseline_config_is_built_only_through_matching():
    with pytest.raises(ValueError, match="build_network"):
        LeNet(ModelConfig(baseline={"match": "params", "like": {"layers": [0]}}), canvas=48)
