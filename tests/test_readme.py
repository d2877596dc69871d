"""Every README snippet runs, as written, on the output of ``statmech-nn demo`` (run once).

Shell lines run through bash, so quoting is bash's; ``statmech-nn`` there imports this checkout
through ``PYTHONPATH``.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from collections.abc import Callable
from html.parser import HTMLParser
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DEMO = ["--epochs", "2", "--trials", "3", "--readout-epochs", "1"]
DEMO += ["--limit-train", "192", "--limit-eval", "96", "--device", "cpu"]

SKIPPED = {
    "pip install": "set-up: installs the package (already installed to run the tests)",
    "--device cuda": "needs a GPU and the CIFAR-100 download",
}
"""Blocks not run, by a line they contain: set-up commands and the GPU recipe."""

REQUIRES = {"hf:": "transformers", "timm:": "timm"}
"""Blocks that name a model of an optional library, by a string they contain: its package."""

_WEIGHTS = (
    "from safetensors.torch import save_file\n"
    "from statmech_nn import models\n"
    "save_file(models.create({name!r}, num_classes=10{size}).net.state_dict(), {file!r})\n"
)
FILES = {
    "vit.safetensors": _WEIGHTS.format(name="timm:vit-tiny-digits", size=", img_size=16",
                                       file="vit.safetensors"),
    "weights.safetensors": _WEIGHTS.format(name="torchvision:vit-tiny-digits", size="",
                                           file="weights.safetensors"),
}  # fmt: skip
"""Files a block names as if the reader had them (a model trained elsewhere, saved with its
library's own keys): made first, in the demo's folder."""

SHORTENED = {
    "--epochs 8": "--epochs 2",  # the text block's fine-tuning of hf:bert-tiny-text
    "demo --task text": "demo --task text " + " ".join(DEMO),  # the text demo, like the demo
}
"""What the test shortens in shell lines, to keep its time reasonable (the README keeps what a
user would run): the text block's 8 training epochs, and the text demo's sizes."""


def fenced_blocks(text: str) -> list[tuple[str, str]]:
    """(language, code) of every fenced code block of a Markdown text."""
    return re.findall(r"^```(\w*)\n(.*?)^```", text, flags=re.S | re.M)


def _blocks() -> list[tuple[str, str]]:
    return fenced_blocks(README.read_text(encoding="utf-8"))


def _skip_reason(code: str) -> str | None:
    return next((why for key, why in SKIPPED.items() if key in code), None)


def test_readme_has_python_and_shell_blocks_and_skips_only_the_listed():
    blocks = _blocks()
    assert {lang for lang, _ in blocks} == {"python", "bash"}
    skipped = [code for _, code in blocks if _skip_reason(code)]
    assert len(skipped) == len(SKIPPED)


class DemoOutput:
    """Where the demo ran and the run ids it printed."""

    def __init__(self, folder: Path, out: str) -> None:
        self.folder = folder
        self.out = out
        self.train_run = out.strip().splitlines()[-1]
        self.report = Path(re.search(r"report: (\S+\.html)", out).group(1))


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> DemoOutput:
    folder = tmp_path_factory.mktemp("readme_demo")
    env = _env(folder)
    done = subprocess.run(
        [sys.executable, "-m", "statmech_nn", "demo", *DEMO],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return DemoOutput(folder, done.stdout)


def _env(folder: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def _with_run(code: str, demo: DemoOutput) -> str:
    return code.replace("RUN_ID", demo.train_run)


@pytest.mark.slow
@pytest.mark.timeout(1800)
@pytest.mark.parametrize("index", range(len(_blocks())))
def test_readme_block_runs_on_the_demo(index, demo, monkeypatch):
    lang, code = _blocks()[index]
    reason = _skip_reason(code)
    if reason:
        pytest.skip(reason)
    for key, package in REQUIRES.items():
        if key in code:
            pytest.importorskip(package)
    monkeypatch.chdir(demo.folder)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    _make_files(code, demo.folder)
    if lang == "bash":
        _run_shell(code, demo.train_run, lambda line: _execute(line, demo.folder))
        return
    namespace: dict = {}
    code = _with_run(code, demo)
    exec(compile(code, f"README block {index}", "exec"), namespace)  # noqa: S102
    _check_python_results(code, namespace)


def _make_files(code: str, folder: Path) -> None:
    """The :data:`FILES` that ``code`` names, made in ``folder`` unless they are there."""
    for name, maker in FILES.items():
        if name in code and not (folder / name).exists():
            subprocess.run([sys.executable, "-c", maker], cwd=folder, env=_env(folder), check=True)


def _shell_lines(code: str) -> list[str]:
    """The block's commands, with backslash-continued lines joined."""
    return code.replace("\\\n", " ").splitlines()


def run_created(argv: list[str], out: str) -> str | None:
    """The run id a command prints when it creates a run: ``train``'s last line, ``snp
    --model``'s "model run ID" line; None for other commands."""
    lines = out.strip().splitlines()
    if argv[1:2] == ["train"] and lines:
        return lines[-1].strip()
    if argv[1:2] == ["snp"] and "--model" in argv:
        return next((ln.split()[-1] for ln in lines if ln.startswith("model run ")), None)
    return None


def _run_shell(code: str, default_run: str, execute: Callable[[str], str]) -> None:
    """Run a shell block's commands; RUN_ID is the run the block's last run-creating line made
    (``default_run``, the demo's training run, before any)."""
    run_id = default_run
    for line in _shell_lines(code):
        line = line.split(" #", 1)[0].strip()
        if not line or line.startswith("#"):
            continue
        for text, shorter in SHORTENED.items():
            line = line.replace(text, shorter)
        line = line.replace("RUN_ID", run_id)
        argv = shlex.split(line)
        assert argv[0] == "statmech-nn", line
        out = execute(line)
        run_id = run_created(argv, out) or run_id


def _execute(line: str, folder: Path) -> str:
    """Run one shell line in ``folder``; its stdout (it must succeed and match some run)."""
    argv = shlex.split(line)
    done = subprocess.run(
        ["bash", "-c", line],
        cwd=folder,
        env=_env(folder),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, f"{line}\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
    assert "no runs match" not in done.stdout, line
    if "--csv" in argv:
        csv = folder / argv[argv.index("--csv") + 1]
        assert len(csv.read_text().splitlines()) > 1
    return done.stdout


def test_later_lines_of_a_block_use_the_run_it_created():
    """RUN_ID after a ``train`` / ``snp --model`` line is that line's run, else the demo's."""
    outputs = {"train": "epoch 1\nTRAINED\n", "snp": "model run IMPORTED\nsnp run SNP\n"}
    ran: list[str] = []

    def execute(line: str) -> str:
        ran.append(line)
        return outputs.get(shlex.split(line)[1], "done\n")

    block = (
        "statmech-nn snp RUN_ID --sites mha  # before any run of the block's own\n"
        "statmech-nn train --model hf:bert-tiny-text \\\n    --epochs 8\n"
        "statmech-nn order RUN_ID --over-checkpoints\n"
        "statmech-nn snp --model timm:x --weights w.safetensors  # prints model run RUN_ID\n"
        "statmech-nn study andc RUN_ID --trials 20\n"
    )
    _run_shell(block, "DEMO", execute)
    assert ran == [
        "statmech-nn snp DEMO --sites mha",
        "statmech-nn train --model hf:bert-tiny-text      --epochs 2",
        "statmech-nn order TRAINED --over-checkpoints",
        "statmech-nn snp --model timm:x --weights w.safetensors",
        "statmech-nn study andc IMPORTED --trials 20",
    ]


def _check_python_results(code: str, namespace: dict) -> None:
    """The values the snippets name are there and not empty (a query that matches nothing fails)."""
    if "load_snp" in code:
        node = namespace["ds"].snp_ff.sel(layer=1, node=17)
        assert node.shape[0] == node.shape[1] == namespace["ds"].sizes["label_true"]
        assert namespace["recognised"].shape[-1] == node.shape[0]
        assert int(namespace["stats"].sizes["layer"]) == 2
        assert {"Q", "Q_null_mean"} <= set(namespace["sym"].data_vars)
    if "order_parameters" in code:
        from statmech_nn.query import last_layer

        q = namespace["q"]
        assert q.run[last_layer(q.order_Q) > 0].size >= 1


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_demo_report_explains_every_metric_in_its_tables(demo, monkeypatch):
    """Every metric the demo's runs log is in the report's glossary, and headings are unique."""
    import mlflow

    from statmech_nn.report import descendants, run_tree, term_of
    from statmech_nn.report.glossary import anchor

    monkeypatch.chdir(demo.folder)
    mlflow.set_tracking_uri(f"sqlite:///{demo.folder / 'mlruns' / 'mlflow.db'}")
    tree = run_tree(demo.train_run)
    names = set(tree.run.data.metrics)
    for node in descendants(tree):
        names |= {_family(n) for n in node.run.data.metrics}
    assert not {n for n in names if term_of(n) is None}
    page = _Page()
    page.feed(demo.report.read_text(encoding="utf-8"))
    assert len(page.headings) == len(set(page.headings))
    assert {anchor(term_of(n)) for n in names} <= page.ids


def _family(name: str) -> str:
    from statmech_nn.naming import LAYERED_METRIC

    match = LAYERED_METRIC.match(name)
    return match["family"] if match else name


class _Page(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.headings: list[str] = []
        self.ids: set[str] = set()
        self._tag = ""

    def handle_starttag(self, tag, attrs):
        self._tag = tag
        if dict(attrs).get("id"):
            self.ids.add(dict(attrs)["id"])

    def handle_data(self, data):
        if self._tag == "h2" and data.strip():
            self.headings.append(data.strip())
        self._tag = ""
