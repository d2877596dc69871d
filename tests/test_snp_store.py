"""The stored SNP netCDF: compression that pays, chunks of whole matrices, names, lazy reads."""

from __future__ import annotations

import gc

import h5py
import numpy as np
import pytest
import torch
import xarray as xr
from _tiny import tiny_cct
from torch.utils.data import TensorDataset

from statmech_nn import snp
from statmech_nn.errors import SchemaError
from statmech_nn.snp import store

LABELS = 10


def images(n: int, seed: int) -> TensorDataset:
    gen = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % LABELS
    x = torch.randn(n, 3, 16, 16, generator=gen) + 0.3 * y[:, None, None, None]
    return TensorDataset(x, y)


@pytest.fixture(scope="module")
def computed() -> xr.Dataset:
    """Real SNP matrices of a random CCT (2 blocks of 128 nodes, 10 labels: the demo's sizes)."""
    from types import SimpleNamespace

    data = SimpleNamespace(
        train=images(60, 1),
        val=images(10, 2),
        test=images(100, 3),
        classes=[f"c{i}" for i in range(LABELS)],
        num_classes=LABELS,
    )
    model = tiny_cct(peaked=True, num_classes=LABELS, embedding_dim=128, num_heads=4)
    return snp.compute(
        model, data, sites="mha,ff", readout_epochs=1, batch_size=32, device="cpu", progress=False
    )


def test_compressed_file_is_smaller_than_uncompressed(computed, tmp_path):
    ours = snp.save(computed, tmp_path / "snp.nc")
    plain = tmp_path / "plain.nc"
    store.describe(computed).to_netcdf(plain, engine="h5netcdf")  # no encoding: contiguous
    with h5py.File(plain) as f:
        assert f["snp_ff"].compression is None  # the comparison is against uncompressed bytes
    assert ours.stat().st_size < plain.stat().st_size
    with h5py.File(ours) as f:
        assert f["snp_ff"].shuffle and f["snp_ff"].compression == "gzip"


def test_chunks_hold_one_layers_whole_matrices(computed, tmp_path):
    path = snp.save(computed, tmp_path / "snp.nc")
    layers, nodes, rows, cols = computed.snp_ff.shape
    with h5py.File(path) as f:
        assert f["snp_ff"].chunks == (1, nodes, rows, cols)
        assert f["snp_mha"].chunks == (1, nodes, rows, cols)
        heads = computed.head_snp_mha.shape[1]
        assert f["head_snp_mha"].chunks == (1, heads, rows, cols)
        # Small other variables stay contiguous: a chunk index would cost more than zlib saves.
        assert f["scale_ff"].nbytes < store.COMPRESS_MIN_BYTES
        assert f["scale_ff"].chunks is None and f["acc_ff"].chunks is None


def test_huge_layers_are_cut_into_equal_node_blocks_under_the_limit():
    # 256 nodes of 1000 x 1000 float32 matrices: 1 GB per layer.
    chunks = store.matrix_chunks((7, 256, 1000, 1000))
    assert chunks[0] == 1 and chunks[2:] == (1000, 1000)
    assert chunks[1] * 1000 * 1000 * 4 <= store.CHUNK_BYTES
    assert 256 % chunks[1] == 0  # equal blocks, no ragged last chunk here
    assert store.matrix_chunks((7, 256, 10, 10)) == (1, 256, 10, 10)


def test_every_variable_and_matrix_axis_has_a_long_name(computed, tmp_path):
    back = snp.load(snp.save(computed, tmp_path / "snp.nc"))
    try:
        for name in [*back.data_vars, "layer", "node", "label_true", "label_out", "head"]:
            assert back[name].attrs.get("long_name"), name
        assert "ff" in back.snp_ff.attrs["long_name"]
        assert back.acc_ff.attrs["units"] == "1" and back.count_label.attrs["units"] == "samples"
    finally:
        back.close()


@pytest.mark.slow  # trains or runs a command end to end
def test_round_trip_is_identical_and_lazy(computed, tmp_path):
    path = snp.save(computed, tmp_path / "snp.nc")
    with snp.load(path) as back:
        # Lazily opened: the matrices are not numpy arrays in memory yet.
        assert not isinstance(back.snp_ff.variable._data, np.ndarray)
        xr.testing.assert_identical(back.drop_attrs(), computed.drop_attrs())
        assert back.attrs["sites"] == computed.attrs["sites"]
        assert {k: v for k, v in back.attrs.items() if k != "sites"} == {
            k: v for k, v in computed.attrs.items() if k != "sites"
        }
    eager = snp.load(path, lazy=False)
    assert isinstance(eager.snp_ff.variable._data, np.ndarray)
    path.unlink()  # the eager copy needs no file
    gc.collect()
    np.testing.assert_array_equal(eager.snp_ff.values, computed.snp_ff.values)


def test_a_lazy_dataset_is_closed_by_close(computed, tmp_path):
    path = snp.save(computed, tmp_path / "snp.nc")
    ds = snp.load(path)
    ds.close()
    # Nothing holds the file open: HDF5 can open it for writing (it refuses a file it has open).
    with h5py.File(path, "r+") as f:
        assert "snp_ff" in f


def test_a_file_that_fails_validation_is_closed(tmp_path):
    foreign = tmp_path / "foreign.nc"
    xr.Dataset({"t": ("x", np.arange(3.0))}).to_netcdf(foreign, engine="h5netcdf")
    with pytest.raises(SchemaError):
        snp.load(foreign)
    with h5py.File(foreign, "r+") as f:
        assert "t" in f
