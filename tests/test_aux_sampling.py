"""AugLocal's sampling ablations: nearest and random plans obey their rules, random is
reproducible for a seed, the settings reach checkpoints and --dry-run, and bad input stops."""

from dataclasses import replace

import pytest
import torch

from training.auglocal import aux_plan, sample_layers
from training.checkpoint import check_resume
from training.local import MethodConfig
from training.models import build_model
from training.train import TrainConfig, main, method_config, parse_args, train

WIDTHS = build_model("resnet32").layer_widths  # 16 layers


@pytest.mark.parametrize("aux_depth", [1, 2, 3, 5])
def test_nearest_mirrors_the_next_layers(aux_depth):
    plan = aux_plan(WIDTHS, 16, aux_depth, 0.5, sampling="nearest")
    for layer, blocks in plan.items():
        assert [b.layer for b in blocks] == list(range(layer + 1, layer + len(blocks) + 1))


def random_layers(seed, aux_depth=3):
    plan = aux_plan(WIDTHS, 16, aux_depth, None, sampling="random", seed=seed)
    return {layer: [b.layer for b in blocks] for layer, blocks in plan.items()}


def test_random_plans_are_later_distinct_layers_ending_at_the_last():
    for seed in range(5):
        for layer, sampled in random_layers(seed).items():
            assert len(sampled) == 3 and sampled == sorted(set(sampled))
            assert sampled[0] > layer and sampled[-1] == len(WIDTHS) - 1


def test_random_plans_are_reproducible_for_a_seed_and_differ_for_another():
    assert random_layers(7) == random_layers(7)
    assert random_layers(7) != random_layers(8)
    # each layer's draw depends only on (seed, layer): the same for another aux depth's prefix
    assert sample_layers(2, 16, 3, "random", 7) == random_layers(7)[2]


def test_uniform_is_the_default_rule():
    assert aux_plan(WIDTHS, 16, 2, 0.5) == aux_plan(WIDTHS, 16, 2, 0.5, sampling="uniform")
    assert MethodConfig("auglocal", 16, 2, 0.5, aux_sampling="uniform") == \
        MethodConfig("auglocal", 16, 2, 0.5)


def test_random_without_enough_later_layers_is_refused():
    with pytest.raises(ValueError, match=r"draws 3 of the later layers of layer 14, but only 1"):
        sample_layers(14, 16, 3, "random", 0)
    with pytest.raises(ValueError, match=r"'random' draws 2 .* layer 14"):
        aux_plan(WIDTHS, 16, 2, None, sampling="random", seed=0, reduce=False)


@pytest.mark.parametrize("kwargs, match", [
    (dict(sampling="sideways"), r"aux sampling 'sideways' is unknown"),
    (dict(sampling="random"), r"'random' needs an integer seed"),
    (dict(sampling="nearest", seed=3), r"'nearest' with seed=3"),
])
def test_bad_sampling_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        aux_plan(WIDTHS, 16, 2, 0.5, **kwargs)


@pytest.mark.parametrize("settings, match", [
    (dict(aux_sampling="sideways"), r"aux_sampling='sideways' is unknown"),
    (dict(aux_sampling="random"), r"'random' rule needs an integer seed"),
    (dict(aux_seed=1), r"aux_sampling='uniform' with aux_seed=1"),
])
def test_bad_method_settings(settings, match):
    with pytest.raises(ValueError, match=match):
        MethodConfig("auglocal", 16, 2, 0.5, **settings)
    with pytest.raises(ValueError, match=r"'dgl' takes no aux_sampling"):
        MethodConfig("dgl", 16, aux_sampling="nearest")


def test_flags_and_the_seed_default(capsys):
    with pytest.raises(SystemExit):
        parse_args(["--aux-sampling", "sideways"])
    assert "invalid choice: 'sideways'" in capsys.readouterr().err
    config = parse_args(["--method", "auglocal", "--aux-sampling", "random", "--seed", "4"])
    assert method_config(config, 10).aux_seed == 4  # --aux-seed defaults to --seed
    assert method_config(replace(config, aux_seed=9), 10).aux_seed == 9
    assert method_config(replace(config, aux_sampling="nearest"), 10).aux_seed is None


def test_dry_run_prints_the_nearest_plan(capsys):
    main(["--method", "auglocal", "--arch", "resnet32", "--dataset", "digits", "--K", "16",
          "--aux-sampling", "nearest", "--dry-run"])
    text = capsys.readouterr().out
    assert "aux_sampling=nearest" in text and "| 0 | 16 | 2 | 1[16,s1] 2[16,s1] |" in text


def test_random_settings_reach_the_checkpoint_and_resume(tmp_path):
    config = TrainConfig(method="auglocal", arch="resnet14", width=4, dataset="digits",
                         subset=128, epochs=1, batch_size=64, aux_sampling="random", seed=3,
                         out=str(tmp_path / "al.pt"), progress=False)
    train(config)
    ckpt = torch.load(config.out, weights_only=True)
    assert ckpt["method"]["aux_sampling"] == "random" and ckpt["method"]["aux_seed"] == 3
    rebuilt = MethodConfig.from_dict(ckpt["method"]).build_step(
        build_model("resnet14", width=4, in_channels=1), num_classes=10)
    rebuilt.load_aux_state_dict(ckpt["aux_state_dict"])  # the same aux nets from the seed
    with pytest.raises(ValueError, match="--aux-sampling 'nearest'"):
        train(replace(config, epochs=2, aux_sampling="nearest", resume=True))


def test_checkpoints_older_than_the_new_settings_still_resume(tmp_path):
    new = vars(TrainConfig(method="auglocal"))
    old = {k: v for k, v in new.items() if k not in (
        "aux_sampling", "aux_seed", "aux_config", "aux_loss", "lambda_x", "lambda_y", "beta")}
    check_resume(new, {"config": old}, tmp_path / "old.pt")  # no clash
    with pytest.raises(ValueError, match="--aux-sampling 'random'"):
        check_resume({**new, "aux_sampling": "random"}, {"config": old}, tmp_path / "old.pt")
