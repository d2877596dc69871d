"""The readout cache flags of snp and scaling reach ReadoutConfig; bad values are one line."""

from __future__ import annotations

import pytest

from statmech_nn import cli, scaling, snp
from statmech_nn.commands import options
from statmech_nn.readout import ReadoutConfig

FLAGS = ["--cache", "disk", "--cache-dir", "/tmp/c", "--cache-budget", "1.5G",
         "--cache-dtype", "fp32", "--compile", "--deterministic"]  # fmt: skip


def _captured(monkeypatch, module, name):
    seen: dict = {}

    def fake(*args, **kwargs):
        seen.update(kwargs)
        raise SystemExit(0)

    monkeypatch.setattr(module, name, fake)
    return seen


def test_snp_flags_reach_the_readout_config(monkeypatch):
    seen = _captured(monkeypatch, snp, "compute_for_run")
    with pytest.raises(SystemExit):
        cli.main(["snp", "RUN", *FLAGS])
    config = ReadoutConfig(readout=seen["readout"], **seen["readout_options"])
    assert (config.cache, config.cache_dir, config.cache_dtype) == ("disk", "/tmp/c", "fp32")
    assert config.cache_budget == 3 * 2**29  # 1.5 GiB
    assert config.compile and config.deterministic


def test_defaults_are_the_readout_configs_own(monkeypatch):
    seen = _captured(monkeypatch, snp, "compute_for_run")
    with pytest.raises(SystemExit):
        cli.main(["snp", "RUN"])
    got = ReadoutConfig(readout=seen["readout"], **seen["readout_options"])
    default = ReadoutConfig()
    for field in ("cache", "cache_dtype", "cache_dir", "cache_budget", "compile", "deterministic"):
        assert getattr(got, field) == getattr(default, field), field


def test_scaling_gets_them_too(monkeypatch):
    seen = _captured(monkeypatch, scaling, "for_run")
    with pytest.raises(SystemExit):
        cli.main(["scaling", "RUN", "--labels", "2,3", "--cache", "none", "--cache-budget", "500M"])
    chosen = seen["snp_options"]["readout_options"]
    assert chosen["cache"] == "none" and chosen["cache_budget"] == 500 * 2**20


@pytest.mark.parametrize(
    ("size", "expected"), [("4G", 4 * 2**30), ("500M", 500 * 2**20), ("123", 123), ("2KiB", 2048)]
)
def test_sizes(size, expected):
    assert options.parse_size("--cache-budget", size) == expected


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--cache", "ram"], "--cache must be one of memory, disk, none"),
        (["--cache-dtype", "fp16"], "--cache-dtype must be one of bf16, fp32"),
        (["--cache-budget", "4Q"], "--cache-budget must be a positive size"),
        (["--cache-budget", "0"], "--cache-budget must be a positive size"),
        (["--cache-dir", "/tmp/x"], "--cache-dir is for --cache disk"),
        (["--cache", "none", "--compile"], "not with --cache none"),
    ],
)
def test_bad_values_are_one_line(workdir, capsys, argv, message):
    assert cli.main(["snp", "0" * 32, *argv]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("statmech-nn snp: error: "), lines
    assert message in lines[0]
    assert not (workdir / "mlruns").exists()
