import pytest

from study import loading, resolution
from study.models import LeNet, build_network, forward_flops, matched, n_params
from study.sections import ModelConfig

from ..conftest import ROOT

FACTOR_STUDIES = ["position", "iterations", "layers", "complexity"]


def attentional_models() -> list[tuple[str, ModelConfig]]:
    """Every attentional network the shipped factor studies can produce."""
    found = {}
    for name in FACTOR_STUDIES:
        study = loading.load(ROOT / "searchspaces" / f"{name}.yaml")
        for level in study.space[study.compare].levels():
            model = resolution.resolve(study, {study.compare: level}).model
            if model.attention.layers:
                found[model.model_dump_json()] = (f"{name}:{level}", model)
    return list(found.values())


ATTENTIONAL = attentional_models()


@pytest.mark.slow
@pytest.mark.parametrize("match", ["params", "flops"])
@pytest.mark.parametrize("model", [m for _, m in ATTENTIONAL], ids=[label for label, _ in ATTENTIONAL])
def test_baselines_match_every_attentional_model_in_the_studies(model, match):
    target_net = LeNet(model, 48)
    target = n_params(target_net) if match == "params" else forward_flops(target_net, 48)
    spec = ModelConfig.model_validate({**model.model_dump(), "attention": {"layers": []},
                                       "baseline": {"match": match, "like": model.attention.model_dump()}})
    net = build_network(spec, 48)
    achieved = n_params(net) if match == "params" else forward_flops(net, 48)
    assert abs(achieved / target - 1) <= 0.02
    assert not any(type(m).__name__ == "AttConv" for m in net.modules())
    result = matched(spec, 48)
    assert (result.target, result.achieved) == (target, achieved)


def test_flop_matching_widens_every_layer_by_one_factor_then_fills():
    spec = ModelConfig(baseline={"match": "flops", "like": {"layers": [0], "iterations": 4}})
    widened = matched(spec, 48).config
    assert widened.channels == [10, 26] and widened.hidden[1] == 134  # 1.6 × [6, 16] and × 84
    assert widened.baseline is None and widened.attention.layers == []


def test_an_unreachable_tolerance_is_refused():
    spec = ModelConfig(baseline={"match": "flops", "like": {"layers": [0]}, "tolerance": 1e-7})
    with pytest.raises(ValueError, match="raise model.baseline.tolerance"):
        matched(spec, 48)
