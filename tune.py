"""Search train.py's hyperparameters with Optuna: every trial a train.py run, pruned when it falls behind.

python tune.py                                       # 20 trials over the MLP's dropout rates
python tune.py --tune.n_trials=40 --tune.params='[model.dropout=float:0.0:0.8, model.lr=log:1e-4:1e-2]'
python tune.py --config configs/cnn_mnist5k.yaml --trainer.max_epochs=8 --tune.metric=val/loss
python tune.py --tune.sampler=grid --tune.params='[model.dropout=categorical:0:0.2:0.5:0.7]' --tune.repeats=3
                                                     # every rate with seeds 0, 1, 2: summary.csv, summary.png
python tune.py --help                                # train.py's flags and the --tune.* ones

Run the same command in another terminal (same --tune.storage and --tune.study_name) to add a worker;
run it again after an interruption to continue the study.
"""

from dropout_lab.tuning import TuneCLI, tune


def main(args: list[str] | None = None) -> None:
    tune(TuneCLI(args))


if __name__ == "__main__":
    main()
