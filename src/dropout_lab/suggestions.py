"""The command line's answers to a mistyped key or class name: the closest valid one.

jsonargparse says which key or class it did not accept in the text of its error; the functions
here read that text (``unknown_keys``, ``unknown_class``), so a change of wording in a jsonargparse
release shows up here, and in tests/test_reliability.py's bad-input cases, and nowhere else.
"""

import difflib
import inspect
import re

import lightning as L
from jsonargparse import Namespace
from lightning.pytorch.cli import LightningArgumentParser

from dropout_lab.classifier import Classifier


class SuggestingParser(LightningArgumentParser):
    """A parser whose error for an unknown key ends with the closest valid key (and see get_defaults)."""

    def error(self, message: str, ex: Exception | None = None):
        if self.exit_on_error:  # the parser that prints; the nested ones of --model and --data only raise
            hints = [hint for key, candidates in unknown_keys(message, self) if (hint := closest(key, candidates))]
            message = "\n".join([message.rstrip(), *hints, *unknown_class(message)])
        return super().error(message, ex)

    def get_defaults(self, *args, **kwargs) -> Namespace:
        """The defaults, with the default model and data classes named but their arguments left out.

        jsonargparse (issue #460) would otherwise carry the default class's argument values over to a
        class chosen with ``--data=MNISTDataModule``: it got MNIST5kDataModule's val_size=500 and
        batch_size=64 instead of its own 5000 and 128. Left out here, they are filled from whichever
        class is chosen; ``--model.dropout=0.3`` alone still applies to the default class.
        """
        defaults = super().get_defaults(*args, **kwargs)
        for key in ("model", "data"):
            if isinstance(defaults.get(key), Namespace):
                defaults[key].pop("init_args", None)
        return defaults


def unknown_keys(message: str, parser: LightningArgumentParser) -> list[tuple[str, list[str]]]:
    """(unknown key as a flag, valid flags to compare it with) for each unknown key that ``message`` names."""
    flags = [flag for flag in parser._option_string_actions if flag.startswith("--")]
    found = []
    # --trainer.max_epohs=3 on the command line
    if match := re.search(r"unrecognized arguments: (.*)", message):
        found += [(arg.split("=")[0], flags) for arg in match.group(1).split() if arg.startswith("--")]
    # trainer: {max_epohs: 3} in a config file
    for group, key in re.findall(r"Group '([\w.]+)' does not accept option '(\w+)'", message):
        found.append((f"--{group}.{key}", flags))
    # --model.dropuot=0.3, or model: {init_args: {dropuot: 0.3}}: jsonargparse names the class it tried
    section = re.match(r'Parser key "([\w.]+)"', message)
    for class_path, key in re.findall(r"class_path '([\w.]+)':\s+Option '(\w+)' is not accepted", message):
        params = init_parameters(class_path)
        found.append((f"--{section.group(1)}.{key}", [f"--{section.group(1)}.{name}" for name in params]))
    # seed_everythin: 1 at the top of a config file
    if not section:
        found += [(f"--{key}", flags) for key in re.findall(r"^Option '(\w+)' is not accepted", message)]
    return found


def unknown_class(message: str) -> list[str]:
    """For ``--data=NoSuchData``: a line naming the closest of this package's classes and all of them, else []."""
    section = re.match(r'Parser key "(model|data)"', message)
    name = re.search(r"Expected a dot import path string: (\S+)", message)
    if not (section and name):
        return []
    choices = package_classes(Classifier if section.group(1) == "model" else L.LightningDataModule)
    close = difflib.get_close_matches(name.group(1), choices, n=1, cutoff=0.5)
    hint = f"did you mean --{section.group(1)}={close[0]}? " if close else ""
    return [
        f"Unknown class {name.group(1)!r} for --{section.group(1)}: {hint}This package's classes: "
        f"{', '.join(choices)}; or your own as --{section.group(1)}=your_module.YourClass."
    ]


def package_classes(base: type) -> list[str]:
    """The classes of this package that ``--model=``/``--data=`` accept by name: subclasses of ``base``
    whose arguments all have defaults (so not the bases Classifier and InMemoryDataModule)."""
    import dropout_lab

    classes = [getattr(dropout_lab, name) for name in dropout_lab.__all__]
    return [
        cls.__name__
        for cls in classes
        if isinstance(cls, type) and issubclass(cls, base) and cls is not base and runs_with_defaults(cls)
    ]


def runs_with_defaults(cls: type) -> bool:
    # num_classes and input_shape are set from the DataModule (link_arguments), so they need no default.
    parameters = inspect.signature(cls).parameters.values()
    return all(p.default is not p.empty or p.name in ("num_classes", "input_shape") for p in parameters)


def init_parameters(class_path: str) -> list[str]:
    return [p for p in inspect.signature(import_class(class_path)).parameters if p not in ("args", "kwargs")]


def import_class(class_path: str | None) -> type | None:
    if not class_path:
        return None
    module, _, name = class_path.rpartition(".")
    return getattr(__import__(module, fromlist=[name]), name)


def closest(key: str, candidates: list[str]) -> str | None:
    match = difflib.get_close_matches(key, candidates, n=1, cutoff=0.6)
    if not match:
        return None
    section, _, name = match[0][2:].rpartition(".")
    in_file = f"{section}.init_args.{name}" if section in ("model", "data") else match[0][2:]
    return f"Unknown key {key!r}: did you mean {match[0]}? (in a config file: {in_file})"
