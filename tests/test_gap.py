"""The generalization gap in TensorBoard: tags, arithmetic, HParams, layout, and DDP equality."""

import signal

import pytest
import torch
from conftest import QUICK, hparams_tab_columns, only_run_dir, read_events, run_train, scalars
from tensorboard.plugins.custom_scalar import layout_pb2
from tensorboard.plugins.hparams import plugin_data_pb2

pytestmark = pytest.mark.slow

GAP_TAGS = ["train_eval/loss", "train_eval/acc", "val/loss", "val/acc", "gap/loss", "gap/acc"]


@pytest.fixture(scope="module")
def events(tmp_path_factory):
    """One short single-process run of 3 epochs, read back from its event files."""
    root = tmp_path_factory.mktemp("gap")
    run_train(*QUICK, "--trainer.max_epochs=3", "--model.dropout=0.3", "--seed_everything=5", root=root)
    return read_events(only_run_dir(root))


def test_gap_tags_have_one_point_per_validation_epoch_at_the_global_step(events):
    for tag in GAP_TAGS:
        assert [step for step, _ in scalars(events, tag)] == [3, 7, 11], tag


def test_gap_equals_val_minus_train_eval(events):
    val_loss, train_loss = scalars(events, "val/loss"), scalars(events, "train_eval/loss")
    val_acc, train_acc = scalars(events, "val/acc"), scalars(events, "train_eval/acc")
    for (_, gap), (_, val), (_, train) in zip(scalars(events, "gap/loss"), val_loss, train_loss, strict=True):
        assert gap == pytest.approx(val - train, abs=1e-6)
    for (_, gap), (_, val), (_, train) in zip(scalars(events, "gap/acc"), val_acc, train_acc, strict=True):
        assert gap == pytest.approx(train - val, abs=1e-6)


def test_hparams_summary_records_the_run_and_its_final_metrics(events):
    content = events.PluginTagToContent("hparams")
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    metrics = {info.name.tag for info in experiment.metric_infos}
    assert {"hp/val_acc_best", "hp/gap_loss", "hp/gap_acc", "hp/test_acc"} <= metrics
    assert {"hp/test_nll", "hp/test_ece", "hp/test_brier", "hp/test_mc_acc", "hp/test_mc_ece"} <= metrics
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
    hparams = start.session_start_info.hparams
    assert hparams["model"].string_value == "MLPClassifier"
    assert hparams["data"].string_value == "MNIST5kDataModule"
    assert hparams["dropout"].number_value == pytest.approx(0.3)
    assert hparams["seed_everything"].number_value == 5
    assert {"lr", "batch_size", "seed"} <= set(hparams)  # seed: the split seed of the DataModule
    assert hparams_tab_columns(events) == ["dropout", "dropout_schedule", "input_dropout", "learn_dropout", "model"]
    # The dashboard shows the last value of each metric: the real ones, after the placeholder.
    assert scalars(events, "hp/gap_loss")[-1][1] == pytest.approx(scalars(events, "gap/loss")[-1][1])
    assert scalars(events, "hp/test_acc")[-1][1] == pytest.approx(scalars(events, "test/acc")[-1][1])
    assert scalars(events, "hp/val_acc_best")[-1][1] == pytest.approx(max(v for _, v in scalars(events, "val/acc")))


def test_custom_scalars_layout_overlays_train_eval_and_val(events):
    (tensor_event,) = events.Tensors("custom_scalars__config__")
    layout = layout_pb2.Layout.FromString(tensor_event.tensor_proto.string_val[0])
    charts = {chart.title: list(chart.multiline.tag) for category in layout.category for chart in category.chart}
    assert ["train_eval/loss", "val/loss"] in charts.values()
    assert ["train_eval/acc", "val/acc"] in charts.values()
    assert ["gap/loss"] in charts.values() and ["gap/acc"] in charts.values()  # a chart each: their own scales


# lr = 0 keeps the weights as initialized, so both runs evaluate the same weights; 301 images
# split over 2 ranks and batches of 64 leave uneven ranks and partial batches, where padding would show.
SAME_WEIGHTS = [
    "--model.lr=0",
    "--model.cosine=false",
    "--data.val_size=301",
    "--trainer.max_epochs=1",
    "--trainer.limit_train_batches=2",
    "--trainer.enable_progress_bar=false",
    "--trainer.enable_model_summary=false",
]
COMPARED = GAP_TAGS + ["test/loss", "test/acc"]


def test_ddp_logs_the_same_values_as_one_process_and_masks_differ_by_rank(tmp_path):
    run_train(*SAME_WEIGHTS, root=tmp_path / "single")
    ddp = ["--trainer.accelerator=cpu", "--trainer.devices=2", "--trainer.strategy=ddp"]
    probe = ["--trainer.callbacks+=tests.ddp_probe.DropoutProbe", f"--trainer.callbacks.out_dir={tmp_path / 'probe'}"]
    for attempt in range(2):
        result = run_train(*SAME_WEIGHTS, *ddp, *probe, root=tmp_path / f"ddp{attempt}", check=attempt == 1)
        # A 2-process gloo run was seen to abort (SIGABRT) at exit once in a few runs after all its
        # work was done; train.py closes the process group to prevent it. Retry such a run once.
        if result.returncode == 0:
            break
        assert result.returncode == -signal.SIGABRT and "tensorboard --logdir" in result.stdout, result.stderr[-3000:]
    ddp_root = tmp_path / f"ddp{attempt}"

    single_dir, ddp_dir = only_run_dir(tmp_path / "single"), only_run_dir(ddp_root)
    writer_pids = {path.name.split(".")[-2] for path in ddp_dir.glob("events.out.tfevents.*")}
    assert len(writer_pids) == 1  # one process, rank 0, writes events (names end in .<pid>.<n>)
    single, distributed = read_events(single_dir), read_events(ddp_dir)
    for tag in COMPARED:
        (_, expected), (_, value) = scalars(single, tag)[-1], scalars(distributed, tag)[-1]
        assert value == pytest.approx(expected, abs=1e-5), tag

    rank0, rank1 = (torch.load(tmp_path / "probe" / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert all(torch.equal(rank0["weights"][key], rank1["weights"][key]) for key in rank0["weights"])
    assert rank0["mask"].shape == rank1["mask"].shape and rank0["mask"].any()
    assert not torch.equal(rank0["mask"], rank1["mask"])
    # No rank's masks replay the stream that drew the initial weights: rank 0 re-seeded with the global
    # seed drew its first input mask as (W1 < threshold), the same uniform draws (agreement 1.0).
    weights = rank0["weights"]["net.layers.2.weight"].flatten()
    bound = 1 / weights.new_tensor(784).sqrt()  # nn.Linear's kaiming_uniform: W1 = bound * (2u - 1)
    replayed = weights < bound * (2 * 0.2 - 1)  # u < p, for the default input_dropout p = 0.2
    for probe_of_rank in (rank0, rank1):
        mask = probe_of_rank["mask"].flatten()[: len(replayed) - 16]
        agreement = max((mask == replayed[shift : shift + len(mask)]).float().mean() for shift in range(16))
        assert agreement < 0.8, agreement  # chance is 0.8**2 + 0.2**2 = 0.68
