"""vlmcls.cli: every constant on the command line, checked choices, one-sentence errors, imports without effects,
and the constants reference built from the same comments."""
import os
import re
import subprocess
import sys

import pytest

from conftest import ROOT, run_script
from vlmcls.cli import REFERENCE, SCRIPTS as ALL_SCRIPTS, OneOf, configure, constants_reference, settings_of

SCRIPTS = ["download_dataset.py", "generate_train_json.py", "fine_tune.py", "vlm_benchmark_test_dataset.py",
           "vlm_test.py"]


def test_help_lists_every_constant_with_its_comment():
    out = subprocess.run([sys.executable, str(ROOT / "fine_tune.py"), "--help"], capture_output=True, text=True,
                         cwd=ROOT).stdout
    for name in ("--model_path", "--learning_rate", "--equivalent_epochs_to_train", "--use_lora",
                 "--image_longest_edge", "--resume"):
        assert name in out
    assert "peak learning rate (default: 0.0003)" in " ".join(out.split())


def test_help_prints_a_percent_sign_in_a_comment_or_a_default(tmp_path):
    script = tmp_path / "s.py"
    script.write_text("from vlmcls.cli import configure\nLEVEL = 0.95  # a 95% interval\nFMT = '%d'\n"
                      "configure(globals())\n")
    out = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True, cwd=ROOT,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 0, out.stderr
    assert "a 95% interval (default: 0.95)" in out.stdout and "(default: '%d')" in out.stdout


def test_configure_parses_types_and_both_spellings(tmp_path):
    script = tmp_path / "s.py"
    script.write_text("A = 1  # an int\nB = 0.5\nC = True\nD = 'x'\nE = ['p']\nF = None\n")
    ns = {"__file__": str(script)}
    exec(script.read_text(), ns)
    configure(ns, ["--a=3", "--b", "2e-3", "--c=false", "--d", "y", "--e=[\"q\", \"r\"]", "--f=1024"])
    assert (ns["A"], ns["B"], ns["C"], ns["D"], ns["E"], ns["F"]) == (3, 2e-3, False, "y", ["q", "r"], 1024)
    assert settings_of(ns) == {"a": 3, "b": 2e-3, "c": False, "d": "y", "e": ["q", "r"], "f": 1024}
    with pytest.raises(SystemExit):
        configure(ns, ["--a=notanumber"])


def test_choices_are_checked_on_the_command_line_and_in_the_file(tmp_path, capsys):
    script = tmp_path / "s.py"
    script.write_text("MODE = 'score'\nWHERE = 'auto'\n")
    ns = {"__file__": str(script), "MODE": "score", "WHERE": "auto"}
    choices = {"MODE": OneOf("score", "generate"), "WHERE": OneOf("auto", other=("a folder", lambda v: v == "."))}
    configure(ns, ["--mode=generate", "--where=."], choices)
    assert (ns["MODE"], ns["WHERE"]) == ("generate", ".")
    with pytest.raises(SystemExit):
        configure(ns, ["--mode=scroe"], choices)
    assert "'scroe' is not valid: use score, generate" in capsys.readouterr().err
    ns["WHERE"] = "nowhere"  # as if edited in the file
    with pytest.raises(SystemExit):
        configure(ns, [], choices)
    assert "--where: 'nowhere' is not valid: use auto, or a folder" in capsys.readouterr().err


def test_a_choice_of_a_word_or_true_or_false_parses_each(tmp_path, capsys):
    script = tmp_path / "s.py"
    script.write_text("SWITCH = 'auto'\n")
    ns = {"__file__": str(script), "SWITCH": "auto"}
    choices = {"SWITCH": OneOf("auto", True, False)}
    for flag, value in [("--switch=false", False), ("--switch=True", True), ("--switch=0", False), ([], "auto")]:
        configure(ns, [flag] if flag else [], choices)
        assert ns["SWITCH"] is value if isinstance(value, bool) else ns["SWITCH"] == value
        ns["SWITCH"] = "auto"
    with pytest.raises(SystemExit):
        configure(ns, ["--switch=sometimes"], choices)
    assert "'sometimes' is not valid: use auto, True, False" in capsys.readouterr().err


@pytest.mark.parametrize("script, flag", [("vlm_benchmark_test_dataset.py", "--prediction=scroe"),
                                          ("fine_tune.py", "--device=gpu"), ("fine_tune.py", "--dtype=fp8"),
                                          ("fine_tune.py", "--resume=atuo"), ("fine_tune.py", "--train_questions=one"),
                                          ("fine_tune.py", "--gradient_checkpointing=sometimes"),
                                          ("download_dataset.py", "--source=kagle")])
def test_a_mistyped_choice_fails_at_once_with_the_valid_ones(script, flag, tmp_path):
    proc = run_script(script, flag, cwd=tmp_path, check=False)
    assert proc.returncode == 2 and "is not valid: use" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr and list(tmp_path.iterdir()) == []


def test_wrong_constant_gets_one_clear_message(tmp_path):
    proc = run_script("generate_train_json.py", "--train_ratio=1.5", cwd=tmp_path, check=False)
    assert proc.returncode == 1
    assert proc.stderr.strip() == "error: train_ratio must be between 0 and 1, got 1.5"


def test_scripts_import_without_reading_the_command_line():
    code = ("import sys; sys.argv = ['x', '--no-such-flag']\n"
            f"for name in {[s[:-3] for s in SCRIPTS]}: __import__(name)\n"
            "import fine_tune; print(fine_tune.LEARNING_RATE)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.strip() == "0.0003", proc.stderr


def test_the_committed_constants_reference_is_what_the_scripts_say():
    assert REFERENCE.read_text(encoding="utf-8") == constants_reference(), \
        "docs/constants.md differs from the scripts' constants: run `python -m vlmcls.cli` and commit it"


def test_the_reference_lists_each_constant_with_the_text_help_prints(tmp_path):
    for script in ALL_SCRIPTS:  # a stand-in for each script, one with a constant added
        (tmp_path / script).write_text(f'"""{script}: a stand-in.\n\nMore."""\nSEED = 1  # seed\n')
    (tmp_path / "vlm_test.py").write_text('"""Step 5: a stand-in."""\nSEED = 1  # seed\n'
                                          '# seconds before giving up\nMAX_SECONDS = 60\nPATTERN = "a|b"  # a or b\n')
    reference = constants_reference(tmp_path)
    assert "## `vlm_test.py`\n\nStep 5: a stand-in.\n" in reference
    assert "| `MAX_SECONDS` | `60` | seconds before giving up |" in reference
    assert "| `PATTERN` | `'a\\|b'` | a or b |" in reference  # a | inside a cell would split the row
    assert reference.count("| `SEED` | `1` | seed |") == len(ALL_SCRIPTS)
    help_text = subprocess.run([sys.executable, "-c", "import sys; from vlmcls.cli import configure; "
                                f"ns = {{'__file__': {str(tmp_path / 'vlm_test.py')!r}, 'MAX_SECONDS': 60}}; "
                                "configure(ns, ['--help'])"], capture_output=True, text=True, cwd=ROOT).stdout
    assert "seconds before giving up (default: 60)" in " ".join(help_text.split())


def test_the_readme_names_only_constants_the_scripts_have():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    table = readme[readme.index("The constants most often changed"):readme.index("## Try it in the browser")]
    named = set(re.findall(r"--([a-z_]+)", table))
    known = {name.lower() for name in re.findall(r"^\| `([A-Z][A-Z0-9_]*)` \|", REFERENCE.read_text(), re.M)}
    assert len(named) >= 10 and named <= known, named - known
