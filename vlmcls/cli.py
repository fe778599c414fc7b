"""The command line: script constants as --name=value, checked choices, one-sentence errors, settings records,
and the constants reference built from the same comments (docs/constants.md).

    python -m vlmcls.cli    # rewrite docs/constants.md from the scripts' constants and comments
"""
import argparse
import importlib.util
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# The scripts, in the order they run; their constants make the reference.
SCRIPTS = ["download_dataset.py", "generate_train_json.py", "fine_tune.py", "vlm_benchmark_test_dataset.py",
           "vlm_test.py", "vlm_app.py", "export_model.py"]
REFERENCE = ROOT / "docs" / "constants.md"


class UserError(Exception):
    """A problem with the user's input or settings, reported as one sentence instead of a traceback."""


def run_main(main):
    """Run a script's main(); a UserError ends it with its message and exit status 1."""
    try:
        main()
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)


class OneOf:
    """A setting's valid values: one of `choices`, or, with `other`, also any value that check accepts
    (`other` = (description, check), e.g. an existing folder)."""

    def __init__(self, *choices, other=None):
        self.choices, self.other = choices, other

    def __call__(self, value):
        if value in self.choices or (self.other and self.other[1](value)):
            return value
        valid = ", ".join(map(str, self.choices)) + (f", or {self.other[0]}" if self.other else "")
        raise argparse.ArgumentTypeError(f"{value!r} is not valid: use {valid}")


def existing_path(value):
    return Path(value).exists()


def _parse_bool(text):
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _parse_bool_or_word(text):
    """For a setting that takes true, false or a word such as "auto"."""
    try:
        return _parse_bool(text)
    except argparse.ArgumentTypeError:
        return text.strip()


def _parse_json(kind):
    def parse(text):
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            value = [x.strip() for x in text.split(",") if x.strip()] if kind is list else None
        if not isinstance(value, kind):
            raise argparse.ArgumentTypeError(f"expected a JSON {kind.__name__}, got {text!r}")
        return value
    return parse


def _parse_optional(text):
    """For constants whose default is None: 'none' or '' is None, JSON is decoded, anything else is a string."""
    if text.strip().lower() in ("", "none", "null"):
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _parser_for(default, check=None):
    if isinstance(default, bool):
        parse = _parse_bool
    elif isinstance(check, OneOf) and any(isinstance(c, bool) for c in check.choices):
        parse = _parse_bool_or_word
    elif isinstance(default, (int, float, str)):
        parse = type(default)
    elif isinstance(default, (list, dict)):
        parse = _parse_json(type(default))
    else:
        parse = _parse_optional
    if check is None:
        return parse
    return lambda text: check(parse(text))


def _constant_comments(source_file):
    """Each `NAME = value` line's trailing '# comment' or, without one, the comment lines just above it: the
    --help text and the reference's meaning."""
    comments, above = {}, []
    for line in Path(source_file).read_text(encoding="utf-8").splitlines():
        match = re.match(r"^([A-Z][A-Z0-9_]*)\s*=(?:.*?#\s*(.+)|.*)$", line)
        if match and (match.group(2) or above):
            comments[match.group(1)] = (match.group(2) or " ".join(above)).strip()
        above = above + [line[1:].strip()] if line.startswith("#") else []
    return comments


def constant_names(namespace):
    return [k for k, v in namespace.items() if re.fullmatch(r"[A-Z][A-Z0-9_]*", k) and not callable(v)
            and not isinstance(v, (type, OneOf))]


def configure(namespace, argv=None, choices=None):
    """Let every UPPER_CASE constant of a script be set as --name=value or --name value.

    The value in the file is the default; `--help` lists each with its comment. `choices` maps a constant's
    name to a OneOf: a value outside it stops the script at once, naming the valid ones. argparse checks a
    string default the same way, so a wrong edit of the file fails before any model or data loads too.
    """
    choices = choices or {}
    comments = _constant_comments(namespace["__file__"])
    parser = argparse.ArgumentParser(description=(namespace.get("__doc__") or "").strip(),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    for name in constant_names(namespace):
        default = namespace[name]
        parser.add_argument(f"--{name.lower()}", dest=name, type=_parser_for(default, choices.get(name)),
                            default=default, metavar="VALUE",  # argparse %-formats help: a literal % is %%
                            help=f"{comments.get(name, '')} (default: {default!r})".replace("%", "%%"))
    namespace.update(vars(parser.parse_args(argv)))


def settings_of(namespace):
    """Every constant's final value, as the run used it (what run_config.json and report.json record)."""
    return {name.lower(): namespace[name] for name in constant_names(namespace)}


def _script_namespace(path):
    """A script's globals after importing it, which reads no command line (the constants at their defaults)."""
    spec = importlib.util.spec_from_file_location(Path(path).stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return vars(module)


def _cell(text):
    return text.replace("|", "\\|")


def constants_reference(root=ROOT):
    """docs/constants.md as text: each script's constants, default and comment, the text its --help prints."""
    parts = ["# Constants reference", "",
             "Every constant at the top of each script, with its default and its comment: the text `--help` "
             "prints.", "Give any of them as `--name=value` (the name in lower case; lists and dicts as JSON).",
             "Generated from the scripts by `python -m vlmcls.cli`; do not edit by hand (a test compares).", ""]
    for script in SCRIPTS:
        namespace = _script_namespace(Path(root) / script)
        comments = _constant_comments(namespace["__file__"])
        summary = (namespace.get("__doc__") or "").strip().split("\n\n")[0].replace("\n", " ")
        parts += [f"## `{script}`", "", summary, "", "| constant | default | meaning |", "| --- | --- | --- |"]
        parts += [f"| `{name}` | `{_cell(repr(namespace[name]))}` | {_cell(comments.get(name, ''))} |"
                  for name in constant_names(namespace)]
        parts.append("")
    return "\n".join(parts)


if __name__ == "__main__":
    from vlmcls.files import atomic_write
    atomic_write(REFERENCE, constants_reference())
    print(f"written to {REFERENCE.relative_to(ROOT)}")
