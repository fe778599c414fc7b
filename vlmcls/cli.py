"""The command line: script constants as --name=value, checked choices, one-sentence errors, settings records."""
import argparse
import json
import re
import sys
from pathlib import Path


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
    """The trailing '# comment' of each `NAME = value` line of a script, used as --help text."""
    comments = {}
    for line in Path(source_file).read_text(encoding="utf-8").splitlines():
        match = re.match(r"^([A-Z][A-Z0-9_]*)\s*=.*?#\s*(.+)$", line)
        if match:
            comments[match.group(1)] = match.group(2).strip()
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
                            default=default, metavar="VALUE", help=f"{comments.get(name, '')} (default: {default!r})")
    namespace.update(vars(parser.parse_args(argv)))


def settings_of(namespace):
    """Every constant's final value, as the run used it (what run_config.json and report.json record)."""
    return {name.lower(): namespace[name] for name in constant_names(namespace)}
