"""The command line's answers to a mistyped key or class name: the closest valid one.

jsonargparse says which key or class it did not accept in the text of its error; the functions
here read that text (``unknown_keys``, ``unknown_class``), so a change of wording in a jsonargparse
release shows up here, and in tests/test_reliability.py's bad-input cases, and nowhere else.
"""

import difflib
import inspect
import os
import re
import sys

import lightning as L
from jsonargparse import Namespace
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from dropout_lab.classifier import Classifier

FULL_ERRORS = "DROPOUT_LAB_FULL_ERRORS"  # set to 1: a bad flag's error as jsonargparse words it, with the hint after


class SuggestingParser(LightningArgumentParser):
    """A parser whose error for an unknown key ends with the closest valid key (and see get_defaults)."""

    def error(self, message: str, ex: Exception | None = None):
        if self.exit_on_error:  # the parser that prints; the nested ones of --model and --data only raise
            parser = getattr(ex, "subcommand_parser", None) or self  # the flags of `python train.py test` are its own
            hints = [hint for key, candidates in unknown_keys(message, parser) if (hint := closest(key, candidates))]
            hints += unknown_class(message) + unknown_subcommand(message) + wrong_value(message) + wrong_type(message)
            if hints and not os.environ.get(FULL_ERRORS):
                # jsonargparse's message (the usage, and for --model.* the Union's alternatives) hides the answer.
                sys.stderr.write("".join(f"error: {hint}\n" for hint in hints[:-1]))
                sys.stderr.write(f"error: {hints[-1]} ({FULL_ERRORS}=1 shows the parser's whole message)\n")
                self.exit(2)
            message = "\n".join([message.rstrip(), *hints])
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


def wrong_value(message: str) -> list[str]:
    """For ``--model.dropout=abc``: the one line of jsonargparse's Union message that says what is wrong, else []."""
    section = re.match(r'Parser key "(model|data)"', message)
    problem = re.search(r"Problem with given class_path '[\w.]+':\s+Parser key \"(\w+)\":\s+(.+)", message)
    return [f"--{section.group(1)}.{problem.group(1)}: {problem.group(2).strip()}"] if section and problem else []


def wrong_type(message: str) -> list[str]:
    """For ``--trainer.max_epochs=two``: one line naming the flag, the types it takes and the value given, else []."""
    key = re.match(r'Parser key "([\w.]+)":\s+Does not validate against any of the Union subtypes', message)
    types = re.search(r"Subtypes: \[(.*)\]", message)
    given = re.search(r"Given value: (.*)", message)
    if not (key and types and given) or key.group(1).split(".")[0] in ("model", "data"):  # those: wrong_value
        return []
    names = [name.replace("NoneType", "null") for name in re.findall(r"<class '(\w+)'>", types.group(1))]
    return [f"--{key.group(1)}={given.group(1).strip()}: expected {' or '.join(names)}"]


def unknown_subcommand(message: str) -> list[str]:
    """For ``python train.py tset``: a line naming the closest subcommand, else []."""
    match = re.search(r"unrecognized arguments: (.*)", message)
    words = [arg for arg in match.group(1).split() if not arg.startswith("-")] if match else []
    subcommands = list(LightningCLI.subcommands())
    for word in words:
        if word in subcommands:  # after a flag, where it is read as a value
            return [f"The subcommand comes first: python train.py {word} --ckpt_path=... (then the flags)."]
        if close := difflib.get_close_matches(word, subcommands, n=1, cutoff=0.6):
            return [f"Unknown subcommand {word!r}: did you mean {close[0]}? (python train.py {close[0]} ...)"]
    return []


def package_classes(base: type) -> list[str]:
    """The classes of this package that ``--model=``/``--data=`` accept by name: subclasses of ``base``,
    except the bases the others build on (Classifier, InMemoryDataModule), which are not choices."""
    import dropout_lab

    classes = [getattr(dropout_lab, name) for name in dropout_lab.__all__]
    bases = (base, dropout_lab.Classifier, dropout_lab.InMemoryDataModule)
    return [cls.__name__ for cls in classes if isinstance(cls, type) and issubclass(cls, base) and cls not in bases]


def init_parameters(class_path: str) -> list[str]:
    """The arguments the class takes, with those its ``**kwargs`` passes on to the base class (as jsonargparse reads
    them for the flags: MLPClassifier's own, then Classifier's)."""
    names: list[str] = []
    for klass in import_class(class_path).__mro__:
        if "__init__" not in vars(klass):
            continue
        parameters = list(inspect.signature(klass.__init__).parameters.values())[1:]  # after self
        names += [p.name for p in parameters if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD) and p.name not in names]
        if not any(p.kind is p.VAR_KEYWORD for p in parameters):
            return names
    return names


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
