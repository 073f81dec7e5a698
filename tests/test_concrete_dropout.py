"""Concrete dropout: the layer, its regularizer, --model.learn_dropout, MC dropout, DDP and checkpoints."""

import math
import signal
from pathlib import Path

import lightning as L
import pytest
import torch
from conftest import QUICK, only_run_dir, read_events, run_train, scalars
from torch import nn

from dropout_lab import (
    CNNClassifier,
    ConcreteDropout,
    ConcreteDropout2d,
    CustomDropout,
    MLPClassifier,
    MNIST5kDataModule,
    load_classifier,
)
from dropout_lab.dropout import dropout_rates
from dropout_lab.learned_rates import learn_rates, learned_rates
from dropout_lab.mc_dropout import dropout_layers_on


@pytest.mark.parametrize("p", [0.1, 0.5])
def test_output_keeps_the_input_on_average(p):
    torch.manual_seed(0)
    x = torch.full((1000, 1000), 3.0)
    mean = ConcreteDropout(1000, p)(x).mean() / 3.0
    # The relaxation at t = 0.1 biases the mean by 0.1 % (p = 0.1); 10^6 draws: sampling error ~0.1 %.
    assert mean.item() == pytest.approx(1.0, abs=0.01)
    assert ConcreteDropout2d(1000, p)(x.view(10, 1000, 10, 10)).mean().item() / 3.0 == pytest.approx(1.0, abs=0.02)


def test_the_mask_is_nearly_binary_and_drops_a_fraction_p():
    torch.manual_seed(0)
    kept = ConcreteDropout(100_000, 0.3)(torch.ones(1, 100_000)) * 0.7  # 1 - z
    assert ((kept < 0.05) | (kept > 0.95)).float().mean() > 0.8  # t = 0.1: mostly 0s and 1s
    assert (kept < 0.5).float().mean().item() == pytest.approx(0.3, abs=0.01)  # P(z > 1/2) = p exactly


def test_the_relaxed_mask_is_the_papers_formula_at_the_same_noise():
    # z = sigmoid((log p − log(1−p) + log u − log(1−u)) / t): the eps inside the logs must not move it.
    torch.manual_seed(0)
    out = ConcreteDropout(1000, 0.3, temperature=0.1)(torch.ones(1, 1000))
    torch.manual_seed(0)
    u, p = torch.rand(1, 1000), torch.tensor(0.3)
    z = torch.sigmoid((p.log() - (1 - p).log() + u.log() - (1 - u).log()) / 0.1)
    assert torch.allclose(out, (1 - z) / (1 - p), atol=1e-5)


def test_2d_version_drops_whole_channels():
    torch.manual_seed(0)
    out = ConcreteDropout2d(16, 0.5)(torch.ones(4, 16, 5, 5))
    assert torch.equal(out, out[:, :, :1, :1].expand_as(out))  # one value per (sample, channel)


@pytest.mark.parametrize("layer", [ConcreteDropout(8, 0.3), ConcreteDropout2d(3, 0.3)])
def test_eval_mode_is_the_identity(layer):
    x = torch.randn(2, 3, 4, 8) if isinstance(layer, ConcreteDropout2d) else torch.randn(5, 8)
    layer.eval()
    assert layer(x) is x


def test_p_falls_where_the_noise_only_hurts():
    # The target is the input itself: every dropped or rescaled unit is an error, so the data wants p = 0.
    torch.manual_seed(0)
    layer = ConcreteDropout(8, p=0.5)
    optimizer = torch.optim.SGD(layer.parameters(), lr=0.1)
    x = torch.randn(256, 8)
    for _ in range(50):
        optimizer.zero_grad()
        nn.functional.mse_loss(layer(x), x).backward()
        optimizer.step()
    assert layer.p.item() < 0.2


def test_the_entropy_term_pulls_p_towards_one_half():
    layer = ConcreteDropout(8, p=0.1)
    optimizer = torch.optim.SGD(layer.parameters(), lr=0.1)
    for _ in range(50):
        optimizer.zero_grad()
        layer.regularizer(nn.Identity(), weight_regularizer=0.0, dropout_regularizer=1.0).backward()
        optimizer.step()
    assert layer.p.item() == pytest.approx(0.5, abs=0.01)


def test_regularizer_matches_a_hand_computation():
    layer = ConcreteDropout(4, p=0.2)
    next_layer = nn.Linear(4, 3)
    nn.init.constant_(next_layer.weight, 0.5)
    nn.init.constant_(next_layer.bias, 0.1)
    # wr · Σθ² / (1 - p) + dr · K · (p log p + (1 - p) log(1 - p))
    expected = 0.01 * (12 * 0.25 + 3 * 0.01) / 0.8 + 0.1 * 4 * (0.2 * math.log(0.2) + 0.8 * math.log(0.8))
    value = layer.regularizer(next_layer, weight_regularizer=0.01, dropout_regularizer=0.1)
    assert value.item() == pytest.approx(expected, rel=1e-5)


def test_an_input_of_another_width_is_refused():
    with pytest.raises(ValueError, match=r"ConcreteDropout\(8\) got an input of shape \(2, 9\)"):
        ConcreteDropout(8)(torch.ones(2, 9))
    with pytest.raises(ValueError, match=r"expects \(N, 3, H, W\)"):
        ConcreteDropout2d(3)(torch.ones(2, 4, 5, 5))


@pytest.mark.parametrize(
    ("model_class", "kwargs", "expected", "roles"),
    [
        (
            MLPClassifier,
            {"hidden": [32, 16]},
            [("layers.1", 784, 0.2, "layers.2"), ("layers.4", 32, 0.5, "layers.5"), ("layers.7", 16, 0.5, "layers.8")],
            ["input", "hidden1", "hidden2"],
        ),
        (
            CNNClassifier,
            {"channels": [4, 8], "hidden": 16},
            [("features.5", 4, 0.1, "features.6"), ("features.11", 8, 0.1, "head.1"), ("head.3", 16, 0.5, "head.4")],
            ["conv1", "conv2", "head"],
        ),
    ],
)
def test_learn_dropout_swaps_every_layer_and_pairs_it_with_the_layer_that_follows(model_class, kwargs, expected, roles):
    model = model_class(**kwargs, learn_dropout=True)
    model.configure_model()  # as Lightning does before every loop and before load_from_checkpoint loads weights
    assert not any(type(m) is CustomDropout for m in model.modules())
    names = {module: name for name, module in model.net.named_modules()}
    pairs = [
        (names[layer], layer.num_features, round(layer.p.item(), 6), names[next_layer])
        for layer, next_layer in model.concrete_pairs
    ]
    assert pairs == expected  # (the layer, K, its starting p, the Linear or Conv2d its regularizer weighs)
    # Named by role in TensorBoard's tags (dropout/p/hidden1, hp/p_conv2), not by module index.
    rates = learned_rates(model.net)
    assert rates == pytest.approx({role: p for role, (_, _, p, _) in zip(roles, expected, strict=True)})
    assert dropout_rates(model.net) == pytest.approx(rates)  # dropout/p/<layer>: the drop probability, not the keep
    model.configure_model()  # again, as a second loop would: the same layers, nothing swapped twice
    assert [(names[a], names[b]) for a, b in model.concrete_pairs] == [(a, d) for a, _, _, d in expected]


class DeclaredOutOfOrder(nn.Module):
    """A net whose modules are declared in another order than the data passes them."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(6, 3)
        self.drop = CustomDropout(0.3)
        self.body = nn.Linear(4, 6)

    def forward(self, x):
        return self.head(self.drop(self.body(x.flatten(1))))


def test_learned_rates_pair_each_layer_by_the_forward_pass_not_by_declaration():
    net = DeclaredOutOfOrder()
    ((layer, next_layer),) = learn_rates(net, (1, 2, 2), temperature=0.1)
    assert net.drop is layer and isinstance(layer, ConcreteDropout) and layer.p.item() == pytest.approx(0.3)
    assert next_layer is net.head and layer.num_features == 6  # not body, which declaration order would give
    assert all(module.training for module in net.modules())  # the trace's eval mode is undone


def test_mc_dropout_samples_the_concrete_layers():
    model = MLPClassifier(hidden=[32], learn_dropout=True)
    model.configure_model()
    model.normalization = {"mean": [0.1307], "std": [0.3081]}
    images = torch.randint(0, 256, (5, 28, 28), dtype=torch.uint8)
    torch.manual_seed(0)
    model.eval()
    dropout_layers_on(model)
    assert [m.training for m in model.modules() if isinstance(m, ConcreteDropout)] == [True, True]
    first, second = model(images.float().unsqueeze(1)), model(images.float().unsqueeze(1))
    assert not torch.equal(first, second)  # the passes differ
    model.eval()
    assert torch.equal(model.predict_proba(images), model.predict_proba(images))  # mc_samples=1: deterministic
    assert not torch.equal(model.predict_proba(images, mc_samples=3), model.predict_proba(images, mc_samples=3))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"input_dropout": 0.0}, r"input_dropout=0.0 cannot start a learned rate"),
        ({"dropout": 1.0}, r"dropout=1.0 cannot start a learned rate"),
        ({"concrete_temperature": 0.0}, r"concrete_temperature .* must be > 0, got 0.0"),
        ({"weight_regularizer": -1e-6}, r"weight_regularizer .* must be >= 0, got -1e-06"),
        ({"dropout_regularizer": -1.0}, r"dropout_regularizer .* must be >= 0, got -1.0"),
        ({"dropout_schedule": "early", "dropout_cutoff_epoch": 2}, r"learn_dropout=true learns them: choose one"),
    ],
)
def test_bad_learned_dropout_settings_are_refused_in_one_line(kwargs, message):
    with pytest.raises(ValueError, match=message) as error:
        MLPClassifier(learn_dropout=True, **kwargs)
    assert "\n" not in str(error.value)


def test_the_regularizer_is_part_of_the_training_loss():
    # With a huge dr the entropy term rules: every rate goes towards 0.5, the input's 0.2 up, the hidden 0.8 down.
    L.seed_everything(0, verbose=False)
    model = MLPClassifier(hidden=[16], dropout=0.8, learn_dropout=True, dropout_regularizer=1.0)
    trainer = L.Trainer(
        max_steps=5,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(model, MNIST5kDataModule())
    rates = learned_rates(model.net)
    assert rates["input"] > 0.2 and rates["hidden1"] < 0.8


# --- End to end: train.py under DDP; TensorBoard, HParams, checkpoint -------------------------------


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory):
    """A 2-process CPU DDP run of train.py with learned rates; each rank saves its rates at the end."""
    root = tmp_path_factory.mktemp("learned_ddp")
    ddp = ["--trainer.accelerator=cpu", "--trainer.devices=2", "--trainer.strategy=ddp"]
    probe = ["--trainer.callbacks+=tests.ddp_probe.RatesProbe", f"--trainer.callbacks.out_dir={root / 'probe'}"]
    args = [*QUICK, "--model.learn_dropout=true", "--model.hidden=[32]", *ddp, *probe]
    for attempt in range(2):
        result = run_train(*args, root=root / f"run{attempt}", check=attempt == 1)
        # gloo was seen to abort (SIGABRT) at exit after all the work was done: retry such a run once.
        if result.returncode == 0:
            break
        assert result.returncode == -signal.SIGABRT and "tensorboard --logdir" in result.stdout, result.stderr[-3000:]
    return root, only_run_dir(root / f"run{attempt}")


@pytest.mark.slow
def test_every_ddp_rank_learns_the_same_rates(ddp_run):
    root, _ = ddp_run
    rank0, rank1 = (torch.load(root / "probe" / f"rates{r}.pt", weights_only=True) for r in (0, 1))
    assert rank0.keys() == {"layers.1", "layers.4"}
    assert all(torch.equal(rank0[name], rank1[name]) for name in rank0)
    start = {"layers.1": math.log(0.2 / 0.8), "layers.4": 0.0}
    assert all(rank0[name].item() != pytest.approx(start[name], abs=1e-7) for name in rank0)  # they moved


@pytest.mark.slow
def test_learned_rates_are_logged_shown_in_hparams_and_kept_in_checkpoints(ddp_run):
    root, run_dir = ddp_run
    events = read_events(run_dir)
    logits = torch.load(root / "probe" / "rates0.pt", weights_only=True)  # by module name
    learned = dict(zip(["input", "hidden1"], logits.values(), strict=True))  # by role, as the tags name them
    for name, logit in learned.items():
        assert [step for step, _ in scalars(events, f"dropout/p/{name}")] == [0, 3, 7]  # the start, every validation
        assert scalars(events, f"hp/p_{name}")[-1][1] == pytest.approx(torch.sigmoid(logit).item())
        assert f"hp/p_{name}".encode() in events.PluginTagToContent("hparams")["_hparams_/experiment"]

    model = load_classifier(run_dir / "checkpoints" / "last.ckpt")
    assert learned_rates(model.net) == pytest.approx({name: torch.sigmoid(v).item() for name, v in learned.items()})
    images = torch.randint(0, 256, (3, 28, 28), dtype=torch.uint8)
    probs = model.predict_proba(images, mc_samples=4)
    assert probs.shape == (3, 10) and torch.allclose(probs.sum(dim=-1), torch.ones(3))


@pytest.mark.parametrize(
    ("model", "roles"),
    [
        (MLPClassifier(hidden=[8, 8, 8]), ["input", "hidden1", "hidden2", "hidden3"]),
        (CNNClassifier(channels=[4, 4], hidden=8, batch_norm=True), ["conv1", "conv2", "head"]),  # other indices
    ],
)
def test_fixed_rates_are_named_by_role_not_by_module_index(model, roles):
    assert list(dropout_rates(model.net)) == roles


# Written by `train.py fit --model.hidden=[8] --model.learn_dropout=true` at commit c84a249, when MLPClassifier
# still took all 18 arguments itself and built its ConcreteDropout layers directly.
OLD_CHECKPOINT = Path(__file__).parent / "data" / "learned_mlp_c84a249.ckpt"


@pytest.mark.slow
def test_a_learned_checkpoint_from_before_the_shared_arguments_moved_loads_and_tests(tmp_path):
    model = load_classifier(OLD_CHECKPOINT)
    saved, loaded = torch.load(OLD_CHECKPOINT, weights_only=True)["state_dict"], model.state_dict()
    assert loaded.keys() == saved.keys() and all(torch.equal(loaded[key], saved[key]) for key in saved)
    assert list(learned_rates(model.net)) == ["input", "hidden1"]
    checkpoint = tmp_path / "old.ckpt"
    checkpoint.write_bytes(OLD_CHECKPOINT.read_bytes())
    result = run_train("test", f"--ckpt_path={checkpoint}", "--model.mc_samples=2", *QUICK[3:4], root=None)
    assert "test_mc/acc" in result.stdout
