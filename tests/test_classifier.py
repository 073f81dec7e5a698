"""The LightningModules: Lightning alone switches dropout on and off, at the right moments."""

import ast
from collections import defaultdict
from pathlib import Path

import lightning as L
import pytest
import torch

from dropout_lab import CNNClassifier, CustomDropout, CustomDropout2d, MLPClassifier, MNIST5kDataModule

SRC = Path(__file__).resolve().parents[1] / "src"


class RecordDropoutModes(L.Callback):
    """Record, before every batch of every loop, whether each dropout layer is in training mode."""

    def __init__(self) -> None:
        self.modes: dict[str, list[list[bool]]] = defaultdict(list)

    def record(self, loop: str, pl_module: L.LightningModule) -> None:
        layers = [m for m in pl_module.modules() if isinstance(m, CustomDropout | CustomDropout2d)]
        assert layers, "the model has no dropout layer"
        self.modes[loop].append([m.training for m in layers])

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.record(f"train_epoch_{trainer.current_epoch}", pl_module)

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        self.record("sanity" if trainer.sanity_checking else "val", pl_module)

    def on_test_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        self.record("test", pl_module)

    def on_predict_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        self.record("predict", pl_module)


def tiny_trainer(tmp_path, callbacks=()) -> L.Trainer:
    return L.Trainer(
        max_epochs=2,
        limit_train_batches=3,
        limit_val_batches=2,
        limit_test_batches=2,
        limit_predict_batches=2,
        num_sanity_val_steps=1,
        default_root_dir=tmp_path,
        enable_progress_bar=False,
        enable_model_summary=False,
        logger=False,
        enable_checkpointing=False,
        callbacks=list(callbacks),
    )


@pytest.mark.parametrize("model_class", [MLPClassifier, CNNClassifier])
def test_dropout_is_on_in_training_and_off_in_every_evaluation(tmp_path, model_class):
    recorder = RecordDropoutModes()
    trainer = tiny_trainer(tmp_path, [recorder])
    model = CNNClassifier(channels=(4,), hidden=16) if model_class is CNNClassifier else MLPClassifier(hidden=(16,))
    data = MNIST5kDataModule(batch_size=16)
    trainer.fit(model, data)
    trainer.test(model, data)
    trainer.predict(model, data)

    modes = recorder.modes
    # Epoch 1 comes after a validation epoch: training mode must have been restored.
    for loop in ("train_epoch_0", "train_epoch_1"):
        assert len(modes[loop]) == 3 and all(all(batch) for batch in modes[loop]), loop
    for loop, batches in [("sanity", 2), ("val", 8), ("test", 2), ("predict", 2)]:
        assert len(modes[loop]) == batches and not any(any(batch) for batch in modes[loop]), loop


def test_batch_norm_follows_every_conv_and_learns_its_statistics_in_training_only(tmp_path):
    model = CNNClassifier(channels=(4, 8), hidden=16, batch_norm=True)
    convs = [m for m in model.net.features if isinstance(m, torch.nn.Conv2d)]
    norms = [m for m in model.net.features if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(norms) == len(convs) == 4 and all(conv.bias is None for conv in convs)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in CNNClassifier(channels=(4,)).modules())

    data = MNIST5kDataModule(batch_size=16)
    trainer = tiny_trainer(tmp_path)
    trainer.fit(model, data)
    counts = [norm.num_batches_tracked.item() for norm in norms]
    assert counts == [3 * 2] * 4  # 2 epochs of 3 training batches; the sanity check and validation add none
    trainer.test(model, data)
    assert [norm.num_batches_tracked.item() for norm in norms] == counts


def test_cnn_refuses_a_tensor_that_is_not_a_batch_of_images():
    with pytest.raises(ValueError, match=r"CNN expects a batch of images \(N, C, H, W\), got shape \(1, 28, 28\)"):
        CNNClassifier(channels=(4,), hidden=16)(torch.zeros(1, 28, 28))


def test_dropout_changes_the_output_in_training_but_not_in_evaluation():
    torch.manual_seed(0)
    model, x = MLPClassifier(hidden=(64,)), torch.randn(8, 1, 28, 28)
    assert not torch.equal(model(x), model(x))  # a new module starts in training mode
    model.eval()  # the test switches by hand here; the template's own code never does
    assert torch.equal(model(x), model(x))


# MC dropout switches the dropout layers back on, called from Lightning's on_test/predict_model_eval hooks;
# predict_proba, for use outside a Trainer, does what the predict loop does and restores every mode; learn_rates
# traces the net once in eval mode (no mask drawn, BatchNorm's statistics kept) and restores every mode, and
# concrete_layer gives each new layer the mode of the one it replaces.
SANCTIONED = {"dropout_layers_on", "predict_proba", "learn_rates", "concrete_layer"}


def test_our_code_never_switches_modes_by_hand():
    """No ``.train()``, ``.eval()``, ``training=`` or ``.training = `` in src/ outside those: only Lightning does."""
    offending = [
        f"{path.name}:{node.lineno}"
        for path in SRC.rglob("*.py")
        for node in nodes_outside_sanctioned(ast.parse(path.read_text()))
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in ("train", "eval"))
        or (isinstance(node, ast.Call) and any(keyword.arg == "training" for keyword in node.keywords))
        or (isinstance(node, ast.Assign) and any(getattr(t, "attr", None) == "training" for t in node.targets))
    ]
    assert offending == []


def nodes_outside_sanctioned(tree: ast.AST) -> list[ast.AST]:
    sanctioned = [f for f in ast.walk(tree) if isinstance(f, ast.FunctionDef) and f.name in SANCTIONED]
    inside = {id(node) for function in sanctioned for node in ast.walk(function)}
    return [node for node in ast.walk(tree) if isinstance(node, (ast.Call, ast.Assign)) and id(node) not in inside]


@pytest.mark.parametrize("input_shape", [(1, 28, 28), (3, 32, 32)])
@pytest.mark.parametrize("model_class", [MLPClassifier, CNNClassifier])
def test_input_shape_and_classes_come_from_arguments(model_class, input_shape):
    model = model_class(input_shape=input_shape, num_classes=7)
    assert model(torch.randn(5, *input_shape)).shape == (5, 7)


@pytest.mark.parametrize("argument", ["dropout", "input_dropout"])
def test_mlp_refuses_a_wrong_dropout_naming_the_argument(argument):
    with pytest.raises(ValueError, match=rf"{argument} .* 0 <= {argument} <= 1, got 1.5"):
        MLPClassifier(**{argument: 1.5})


@pytest.mark.parametrize("argument", ["dropout", "conv_dropout"])
def test_cnn_refuses_a_wrong_dropout_naming_the_argument(argument):
    with pytest.raises(ValueError, match=rf"{argument} .* 0 <= {argument} <= 1, got -0.2"):
        CNNClassifier(**{argument: -0.2})


def test_hyperparameters_are_saved_for_load_from_checkpoint():
    model = CNNClassifier(dropout=0.3, lr=0.01)
    assert model.hparams.dropout == 0.3 and model.hparams.lr == 0.01


def test_val_and_train_eval_metrics_come_from_their_own_loaders(tmp_path):
    torch.manual_seed(0)
    model, data = MLPClassifier(hidden=[16]), MNIST5kDataModule(batch_size=500)
    trainer = tiny_trainer(tmp_path)
    trainer.validate(model, data, verbose=False)
    logged = trainer.callback_metrics
    model.eval()  # the reference computation, by hand, outside Lightning
    with torch.no_grad():
        for stage, dataset in (("val", data.val_set), ("train_eval", data.train_eval_set)):
            x, y = dataset[list(range(len(dataset)))]
            expected = torch.nn.functional.cross_entropy(model(x), y)
            assert logged[f"{stage}/loss"].item() == pytest.approx(expected.item(), rel=1e-5), stage
    assert abs(logged["val/loss"] - logged["train_eval/loss"]) > 1e-4  # swapped sides would show


def test_optimizer_applies_weight_decay_and_anneals_the_learning_rate_to_zero(tmp_path):
    model = MLPClassifier(hidden=[8], lr=1e-2, weight_decay=0.1, cosine=True)
    trainer = tiny_trainer(tmp_path)
    trainer.fit(model, MNIST5kDataModule())
    (group,) = trainer.optimizers[0].param_groups
    assert group["weight_decay"] == 0.1
    assert group["initial_lr"] == 1e-2 and group["lr"] == pytest.approx(0, abs=1e-9)  # 6 of 6 steps done


def test_learned_rates_are_not_decayed_with_the_weights():
    # Decay would pull every p_logit to 0 (p to 0.5), whatever the data says.
    model = MLPClassifier(hidden=[8], weight_decay=0.1, cosine=False, learn_dropout=True)
    model.configure_model()  # as the Trainer does first: the learned rates swapped in
    weights, rates = model.configure_optimizers().param_groups
    p_logits = {id(param) for name, param in model.named_parameters() if name.endswith("p_logit")}
    assert {id(param) for param in rates["params"]} == p_logits and len(p_logits) == 2
    assert (weights["weight_decay"], rates["weight_decay"]) == (0.1, 0.0)


def test_validate_logs_no_dropout_rates_and_no_hparams_columns(tmp_path):
    # Outside a fit there is no HParams session, and the rates did not move: only the metrics.
    model = MLPClassifier(hidden=[8], learn_dropout=True)
    trainer = tiny_trainer(tmp_path)
    trainer.validate(model, MNIST5kDataModule(), verbose=False)
    logged = set(trainer.logged_metrics)
    assert {"val/loss", "train_eval/loss"} <= logged
    assert not [tag for tag in logged if tag.startswith(("dropout/", "hp/"))]


class StepsWritten(L.pytorch.loggers.Logger):
    """A logger that keeps the steps at which each metric was written."""

    name, version = "memory", 0

    def __init__(self) -> None:
        super().__init__()
        self.steps: dict[str, list[int]] = defaultdict(list)

    def log_metrics(self, metrics, step=None):
        for key in metrics:
            self.steps[key].append(step)

    def log_hyperparams(self, params, *args, **kwargs):
        pass


def test_training_step_logs_only_on_the_steps_lightning_writes(tmp_path, monkeypatch):
    logged_at: list[int] = []
    model = MLPClassifier(hidden=[8])
    log_dict = model.log_dict
    monkeypatch.setattr(
        model, "log_dict", lambda values, **kw: (logged_at.append(model.global_step), log_dict(values, **kw))
    )
    logger = StepsWritten()
    trainer = L.Trainer(
        max_epochs=1,
        limit_train_batches=7,
        limit_val_batches=0,
        log_every_n_steps=3,
        logger=logger,
        default_root_dir=tmp_path,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
    )
    trainer.fit(model, MNIST5kDataModule())
    assert logger.steps["train/loss"] == [2, 5]  # (step + 1) % log_every_n_steps == 0
    assert logged_at == [2, 5]  # and self.log is called on those steps only
