"""benchmarks/: one results file per benchmark, and commands recorded without this machine's paths (issue #35)."""
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import common  # noqa: E402

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
# the benchmarks whose runs of different standing each keep a results file: accuracy.py's development (choices) and
# confirmation (claims); export.py's --tiny=true run (the elpv agreement); copy_guard.py's run copying every image
TWO_FILES = {"accuracy": ("development", "confirmation"), "export": ("tiny",), "copy-guard": ("all-copies",),
             "multilabel": ("development",)}


def test_a_recorded_command_names_path_settings_instead_of_this_machines_paths():
    line = common.command("frozen.py", ["--images=8", "--work_dir=/work/b1000/work", "--output=~/r.md",
                                        "--rows=[\"lora\"]", "--output=benchmarks/results-frozen.md"])
    assert line == ("Command: `HF_HUB_OFFLINE=1 python benchmarks/frozen.py --images=8 --work_dir=WORK_DIR "
                    "--output=OUTPUT --rows=[\"lora\"] --output=benchmarks/results-frozen.md`")


def test_every_results_file_belongs_to_one_benchmark_and_records_no_machine_path():
    scripts = {p.stem.replace("_", "-") for p in BENCHMARKS.glob("*.py")}  # results-input-path.md: input_path.py
    for results in BENCHMARKS.glob("results-*.md"):
        name = results.stem.removeprefix("results-")
        script = max((s for s in scripts if name == s or name.startswith(s + "-")), key=len, default=name)
        part = name.removeprefix(script).removeprefix("-")
        assert script in scripts, f"{results.name}: no benchmark named {script}.py"
        assert not part or part in TWO_FILES.get(script, ()), f"{results.name}: a second results file of {script}.py"
        text = results.read_text()
        assert not re.search(r"(/work/|/tmp/|/home/)", text), f"{results.name} records a path of this machine"
