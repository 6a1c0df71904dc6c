import re

import pytest

from study import config, loading, resolution
from study.errors import UserError
from study.sections import AttentionConfig

from .conftest import ROOT, SMOKE


def write(tmp_path, text):
    path = tmp_path / "space.yaml"
    path.write_text(text)
    return path


def test_every_shipped_study_validates():
    for path in sorted((ROOT / "searchspaces").glob("*.yaml")):
        study = loading.load(path)
        assert study.name == path.stem


def test_defaults_are_the_original_experiment():
    study = loading.load(ROOT / "searchspaces" / "thesis.yaml")
    assert (study.data.n_images, study.data.canvas, study.data.digits) == (86_000, 48, 3)
    assert (study.train.epochs, study.train.batch_size, study.train.lr) == (30, 32, 3.0e-4)
    assert study.model.channels == [6, 16] and study.model.hidden == [120, 84]
    assert study.search.seeds == 10 and study.n_configurations() == 2 and not study.confirms()


def test_an_asha_study_reloads_from_the_study_yaml_it_wrote(tmp_path):
    space = "space={model.attention.layers: {choice: [[], [0]]}, train.lr: {choice: [0.1, 0.2]}}"
    study = loading.load(SMOKE, [space, "search.scheduler=asha", "search.reduction_factor=3"])
    assert loading.load(write(tmp_path, loading.dump(study))) == study
    fifo = loading.load(SMOKE)  # a fifo study's file holds ASHA's defaults too, and loads
    assert loading.load(write(tmp_path, loading.dump(fifo))) == fifo


def test_set_overrides_dotted_keys_with_yaml_values():
    study = loading.load(SMOKE, ["train.epochs=7", "data.n_images=500", "model.attention.layers=[0, 1]"])
    assert study.train.epochs == 7 and study.data.n_images == 500
    assert study.model.attention.layers == [0, 1]


@pytest.mark.parametrize(
    ("sets", "expected"),
    [
        (["train.epoch=3"], "train.epoch: unknown key"),
        (["data.n_images=lots"], "data.n_images: Input should be a valid integer"),
        (["data.n_images=-5"], "data.n_images: Input should be greater than or equal to 30"),
        (["data.split=[0.5, 0.5, 0.5]"], "data.split: must be three positive fractions"),
        (["model.attention.layers=[3]"], "conv positions that do not exist"),
        (["data.canvas=28", "model.channels=[6, 16, 32]"], "no pixels left after conv+pool stage"),
        (["search.sampler=tpe"], "search.trials is required"),
        (["compare=train.lr"], "compare: 'train.lr' is not a key of space"),
        (["train.epochs"], "write KEY=VALUE"),
        (["search.scheduler=asha"], "asha stops trials early, which only a tuning stage may do"),
        (["search.grace_period=2"], "search.grace_period is read only with search.scheduler: asha"),
        (["space={model.attention.layers: {choice: [[], [0]]}, train.lr: {choice: [0.1, 0.2]}}",
          "search.scheduler=asha", "search.grace_period=2"],
         "grace_period (2) must be below train.epochs (2)"),
    ],
)
def test_bad_input_is_one_message_naming_file_and_key(sets, expected):
    with pytest.raises(UserError) as err:
        loading.load(SMOKE, sets)
    assert expected in str(err.value)
    assert "Traceback" not in str(err.value)
    # A mistake in a --set value is blamed on that --set, not on the file; one in its syntax too.
    assert str(err.value).startswith(f"--set {sets[-1]!r}") or str(SMOKE) in str(err.value)


def test_every_space_choice_is_validated_up_front(tmp_path):
    path = write(tmp_path, "name: x\nspace:\n  model.attention.layers: {choice: [[], [0], [2]]}\n"
                           "search: {sampler: grid}\n")
    with pytest.raises(UserError, match=r"space\.yaml: model: .*\[2\].*with space choice"):
        loading.load(path)


@pytest.mark.parametrize(
    ("space", "expected"),
    [
        ("optimiser.lr: {choice: [1]}", "keys start with one of data, model, train"),
        ("train.rate: {choice: [1]}", "'rate' is not a setting"),
        ("model.attention: {choice: [1]}", "names a whole section"),
        ("model: {choice: {a: {}, b: 1}}", "names a whole section"),
        ("model: {choice: {a: {attention: {layerz: [0]}}}}", "model.attention.layerz: unknown key"),
        ("train.lr: {loguniform: [0.1, 0.01]}", "lower bound must be below the upper"),
        ("train.lr: {choice: [1], uniform: [0, 1]}", "exactly one of"),
    ],
)
def test_space_keys_and_distributions_are_checked(tmp_path, space, expected):
    path = write(tmp_path, f"name: x\nspace:\n  {space}\n  train.weight_decay: {{uniform: [0, 0.1]}}\n"
                           "search: {sampler: random, trials: 2}\n")
    with pytest.raises(UserError, match=expected):
        loading.load(path)


def test_yaml_errors_name_the_file(tmp_path):
    with pytest.raises(UserError, match="space.yaml: not valid YAML"):
        loading.load(write(tmp_path, "name: [unclosed\n"))
    with pytest.raises(UserError, match="no such file"):
        loading.load(tmp_path / "missing.yaml")


def test_resolve_applies_encoded_choices_and_leaves_the_base_alone():
    study = loading.load(SMOKE)
    base = study.model.attention.layers
    trial = resolution.resolve(study, {"model.attention.layers": config.encode([])})
    assert trial.model.attention.layers == [] and study.model.attention.layers == base
    assert resolution.get(trial, "model.attention.layers") == []


def test_dump_round_trips(tmp_path):
    study = loading.load(SMOKE, ["train.epochs=3"])
    again = loading.load(write(tmp_path, loading.dump(study)))
    assert again == study


@pytest.mark.parametrize(
    ("sets", "expected"),
    [
        (["model.attention={layers: [0, 1], iterations: [2, 4, 8]}"], "one count per attentional layer"),
        (["model.attention.iterations=0"], "iterations must lie in 1..64"),
        (["model.baseline={match: params, like: {layers: [0]}}"], "a matched baseline is feed-forward"),
        (["model.attention.layers=[]", "model.baseline={match: flops, like: {layers: []}}"],
         "like.layers is empty"),
        (["model.attention.layers=[]", "model.baseline={match: flops, like: {layers: [5]}}"],
         "baseline.like.layers [5] name conv positions that do not exist"),
        (["search.sampler=tpe", "search.trials=2"], "could only propose its levels again"),
        (["search.sampler=random", "search.trials=4", "compare=null"], "could only propose its levels again"),
        (["compare=train.lr", "space={train.lr: {uniform: [0.001, 0.01]}}", "search.sampler=random",
          "search.trials=2"], "must be a 'choice' key"),
    ],
)
def test_model_and_search_mistakes_are_caught_before_running(sets, expected):
    with pytest.raises(UserError, match=re.escape(expected)):
        loading.load(SMOKE, sets)


def test_iterations_per_layer_follow_the_layers_order():
    attention = AttentionConfig(layers=[1, 0], iterations=[8, 2])
    assert (attention.iterations_at(0), attention.iterations_at(1)) == (2, 8)
    assert AttentionConfig(layers=[0, 1], iterations=3).iterations_at(1) == 3


def test_labelled_choices_store_labels_and_merge_sections():
    study = loading.load(ROOT / "searchspaces" / "complexity.yaml")
    spec = study.space["model"]
    assert spec.levels() == ["attconv", "lenet5", "params-matched", "flops-matched"]
    flops = resolution.resolve(study, {"model": "flops-matched", "train.lr": 1e-3}).model
    # Merged, not replaced: the rest of the model section stays as the file has it.
    assert flops.attention.layers == [] and flops.channels == [6, 16] and flops.batchnorm
    assert flops.baseline.match == "flops" and flops.baseline.like.layers == [0]
    assert resolution.current(study, "model") == "attconv"  # what `study trial` records
    assert resolution.current(study, "train.lr") == study.train.lr


def test_tuning_per_level_multiplies_configurations_by_levels():
    study = loading.load(ROOT / "searchspaces" / "position.yaml", ["search.trials=3"])
    assert study.tuned_per_level() and study.n_configurations() == 3 * 4
    # One Ray trial per configuration, each training all its seeds; then one per level confirming it.
    assert study.n_trials() == 3 * 4 + 4
    assert study.n_networks() == 3 * 4 * study.search.seeds + 4 * study.search.confirm_seeds
    assert study.seeds() == list(range(study.search.seeds))


@pytest.mark.parametrize(("seeds", "levels", "slots"), [(10, 4, 16), (10, 2, 64), (3, 2, 5), (7, 1, 3),
                                                     (4, 3, 2), (1, 2, 8)])
def test_a_levels_seeds_split_into_consecutive_runs_that_fill_the_slots(seeds, levels, slots):
    groups = loading.load(SMOKE).seed_groups(list(range(seeds)), levels, slots, gpu=0)
    assert [seed for group in groups for seed in group] == list(range(seeds))  # each once, in order
    assert len(groups) == max(1, min(seeds, slots // levels))  # as many as leave no slot idle
    assert max(map(len, groups)) - min(map(len, groups)) <= 1


def test_retired_single_value_settings_still_load_and_nothing_else_does(tmp_path):
    old = SMOKE.read_text().replace("batchnorm: true,", "family: lenet5, batchnorm: true,").replace(
        "seeds: 3}", "seeds: 3, metric: best_val_loss, mode: min, scheduler: fifo}")
    assert loading.load(write(tmp_path, old)) == loading.load(SMOKE)
    with pytest.raises(UserError, match="model.family: unknown key"):
        loading.load(write(tmp_path, old.replace("family: lenet5", "family: resnet")))
