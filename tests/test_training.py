import dataclasses

import pytest
import torch

from nas.arch.space import load_space
from nas.data.dataset import load_dataset
from nas.data.splits import TensorSplit
from nas.errors import RecipeError
from nas.models.builder import build_model
from nas.train.evaluation import split_accuracy
from nas.train.recipe import Recipe, parse_recipe
from nas.train.training import train_model


def _setup():
    data = load_dataset("digits", resolution=16, seed=0)
    data = dataclasses.replace(data, train=TensorSplit(data.train.first(256), data.y_train[:256]))  # resume: no more
    space = load_space("fbnet_a", resolution=16, width_multiplier=0.25, classes=10, in_channels=1)
    return data, space


def test_training_learns_digits_with_ema_on_a_short_run():
    # EMA 0.999 over ~100 steps used to leave the averaged weights at chance; the decay now warms up
    data = load_dataset("digits", resolution=16, seed=0)
    space = load_space("fbnet_a", resolution=16, width_multiplier=0.25, classes=10, in_channels=1)
    torch.manual_seed(0)
    result = train_model(build_model(space, space.fixed_arch()), data, Recipe(epochs=5, lr=0.01, ema=0.999))
    assert len(result.history) == 5
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]
    assert split_accuracy(result.model, data.test) > 0.5  # chance is 0.1 (and where a cold EMA stays)


def test_resume_from_checkpoint_matches_uninterrupted_run(tmp_path):
    data, space = _setup()
    recipe = Recipe(epochs=3, lr=0.01, ema=0.9, mixup=0.2)
    torch.manual_seed(0)
    full = train_model(build_model(space, space.fixed_arch()), data, recipe)
    ckpt = tmp_path / "ckpt.pt"

    def interrupt_after_two(epoch, row):
        if epoch == 2:
            raise KeyboardInterrupt

    torch.manual_seed(0)
    with pytest.raises(KeyboardInterrupt):
        train_model(build_model(space, space.fixed_arch()), data, recipe, checkpoint=ckpt,
                    on_epoch=interrupt_after_two)
    # a fresh process would rebuild the model; the checkpoint restores weights, optimiser and history
    torch.manual_seed(123)
    resumed = train_model(build_model(space, space.fixed_arch()), data, recipe, checkpoint=ckpt)
    assert len(resumed.history) == 3
    assert resumed.history[-1]["train_loss"] == pytest.approx(full.history[-1]["train_loss"], rel=1e-4)


def test_recipe_errors_name_the_key():
    with pytest.raises(RecipeError, match="key 'lr'"):
        parse_recipe({"lr": -1})
    with pytest.raises(RecipeError, match="key 'optimiser'"):
        parse_recipe({"optimiser": "sgd"})
