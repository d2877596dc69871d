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

PRELUDES = {
    "hf:vit-tiny-digits": (
        "transformers",
        "from statmech_nn import data\n"
        "splits = data.load('digits', img_size=16).limited(0, train=64, val=32, test=32)\n",
    ),
    "timm:vit-tiny-digits": ("timm", "from statmech_nn import models\n"),
    "torchvision:vit-tiny-digits": (
        "torchvision",
        "from safetensors.torch import save_file\n"
        "from statmech_nn import models\n"
        "save_file(models.create('torchvision:vit-tiny-digits', num_classes=10).state_dict(),"
        " 'weights.safetensors')\n",
    ),
}
"""The foreign-model blocks continue the text above them (``splits``, a saved checkpoint):
what that text assumes, by a string of the block, with the package it needs."""


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
    code = _with_run(code, demo)
    monkeypatch.chdir(demo.folder)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    if lang == "bash":
        _run_shell(code, demo)
        return
    prelude = ""
    for key, (package, text) in PRELUDES.items():
        if key in code:
            pytest.importorskip(package)
            prelude = text
    namespace: dict = {}
    exec(compile(prelude + code, f"README block {index}", "exec"), namespace)  # noqa: S102
    _check_python_results(code, namespace)


SHELL_FILES = {
    "vit.safetensors": (
        "timm",
        "from safetensors.torch import save_file\n"
        "from statmech_nn import models\n"
        "save_file(models.create('timm:vit-tiny-digits', num_classes=10, img_size=16)"
        ".state_dict(), 'vit.safetensors')\n",
    ),
}
"""Files a shell block names as if the reader had them (a model trained elsewhere): made first."""


def _shell_lines(code: str) -> list[str]:
    """The block's commands, with backslash-continued lines joined."""
    return code.replace("\\\n", " ").splitlines()


def _run_shell(code: str, demo: DemoOutput) -> None:
    for name, (package, maker) in SHELL_FILES.items():
        if name in code and not (demo.folder / name).exists():
            pytest.importorskip(package)
            subprocess.run([sys.executable, "-c", maker], cwd=demo.folder, check=True)
    for line in _shell_lines(code):
        line = line.split(" #", 1)[0].strip()
        if not line or line.startswith("#"):
            continue
        argv = shlex.split(line)
        assert argv[0] == "statmech-nn", line
        done = subprocess.run(
            ["bash", "-c", line],
            cwd=demo.folder,
            env=_env(demo.folder),
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert done.returncode == 0, f"{line}\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
        assert "no runs match" not in done.stdout, line
        if "--csv" in argv:
            csv = demo.folder / argv[argv.index("--csv") + 1]
            assert len(csv.read_text().splitlines()) > 1


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
