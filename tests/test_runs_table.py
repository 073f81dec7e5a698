"""scripts/runs_table.py: the README's sweep tables, read from a folder of TensorBoard runs."""

import importlib.util

from conftest import ROOT
from lightning.pytorch.loggers import TensorBoardLogger

spec = importlib.util.spec_from_file_location("runs_table", ROOT / "scripts" / "runs_table.py")
runs_table = importlib.util.module_from_spec(spec)
spec.loader.exec_module(runs_table)


def test_table_lists_training_runs_and_skips_evaluation_runs(tmp_path, capsys):
    trained = TensorBoardLogger(tmp_path, name="", version=0)
    hparams = {"model": "MLPClassifier", "dropout": 0.5, "input_dropout": 0.2, "augment": False}
    trained.log_hyperparams(hparams, {"hp/val_acc_best": 0.0})
    trained.log_metrics({"val/acc": 0.9, "gap/loss": 0.1}, step=1)
    trained.finalize("success")
    for evaluation in (
        TensorBoardLogger(tmp_path, name="", version=1),
        TensorBoardLogger(tmp_path / "version_0", "", "test_0"),
    ):
        evaluation.log_metrics({"test/acc": 0.8}, step=0)  # train.py test: scalars, no HParams summary
        evaluation.finalize("success")
    runs_table.main(str(tmp_path))
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3  # the header, its rule, one run
    assert lines[2].startswith("| MLPClassifier | 0.5 | 0.2 | no | 0.100 | - | - | 0.900 | - |")
