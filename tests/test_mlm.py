"""MLM pre-training pieces (docs/methods.md section 10): BERT's masking, the token loss, configs.

Quick tests; the end-to-end run, resume and token SNP are in ``test_mlm_snp.py``.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from statmech_nn import cli, models, recipes
from statmech_nn.data import load
from statmech_nn.data.mlm import (
    IGNORE_INDEX,
    MaskedTokens,
    Masking,
    mask_tokens,
    masking_for,
    masking_rng,
    scored,
)
from statmech_nn.errors import ConfigError
from statmech_nn.train import TrainConfig, evaluate_on, train
from statmech_nn.train.steps import Totals, loss_of

SPECIALS = (0, 1, 2, 3)
MASK = 3
VOCAB = 40


def sequences(count: int, length: int = 24, seed: int = 0):
    """``[CLS]`` + random words (some ``[UNK]``), right-padded to random lengths."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, VOCAB, (count, length), generator=g)
    ids[torch.rand(count, length, generator=g) < 0.05] = 1  # [UNK]: special, never masked
    ids[:, 0] = 2
    lengths = torch.randint(2, length + 1, (count,), generator=g)
    attention = (torch.arange(length)[None, :] < lengths[:, None]).long()
    ids[attention == 0] = 0
    return ids, attention


def test_masking_follows_berts_rule_on_many_sequences():
    masking = Masking(MASK, SPECIALS, VOCAB)
    ids, attention = sequences(1500)
    chosen_total = as_mask = random_swap = unchanged = 0
    for row in range(len(ids)):
        rng = np.random.default_rng(row)
        got, targets = mask_tokens(ids[row], attention[row], masking, rng)
        original = ids[row]
        eligible = (attention[row] == 1) & ~torch.isin(original, torch.tensor(SPECIALS))
        chosen = targets != IGNORE_INDEX
        n = int(eligible.sum())
        # exactly max(1, round(0.15 n)) of the eligible positions, and none elsewhere
        assert int(chosen.sum()) == (max(1, round(0.15 * n)) if n else 0)
        assert not bool((chosen & ~eligible).any())
        assert torch.equal(targets[chosen], original[chosen])
        assert torch.equal(got[~chosen], original[~chosen])  # padding and specials untouched
        chosen_total += int(chosen.sum())
        as_mask += int((got[chosen] == MASK).sum())
        swapped = got[chosen] != original[chosen]
        random_swap += int((swapped & (got[chosen] != MASK)).sum())
        unchanged += int((~swapped).sum())
        assert not bool(torch.isin(got[chosen & (got != MASK)], torch.tensor(SPECIALS)).any())
    # 80 / 10 / 10, within 5 standard deviations; a random token equals the original 1/36 of the
    # time, which then counts as unchanged
    stay = 0.1 + 0.1 / (VOCAB - len(SPECIALS))
    for observed, share in ((as_mask, 0.8), (random_swap, 0.1 - 0.1 / 36), (unchanged, stay)):
        sd = math.sqrt(share * (1 - share) / chosen_total)
        assert abs(observed / chosen_total - share) < 5 * sd, (observed, chosen_total, share)


def test_a_sequence_without_maskable_positions_is_left_alone():
    masking = Masking(MASK, SPECIALS, VOCAB)
    ids = torch.tensor([2, 1, 0, 0])  # [CLS] [UNK] padding
    got, targets = mask_tokens(ids, torch.tensor([1, 1, 0, 0]), masking, np.random.default_rng(0))
    assert torch.equal(got, ids) and bool((targets == IGNORE_INDEX).all())


@pytest.fixture(scope="module")
def textsynth():
    return load("textsynth", max_length=16, n_train_per_class=4, n_test_per_class=2)


def test_masks_are_a_function_of_seed_split_epoch_and_index(textsynth):
    masking = masking_for(textsynth)
    assert masking.special_ids == (0, 1, 2, 3) and masking.mask_id == 3
    data = MaskedTokens(textsynth.train, masking, seed=5, split="train")

    def draw(epoch, order):
        data.set_epoch(epoch)
        return {i: data[i][1] for i in order}

    n = len(data)
    forward = draw(1, range(n))
    backward = draw(1, reversed(range(n)))  # access order does not matter
    assert all(torch.equal(forward[i], backward[i]) for i in range(n))
    other_epoch = draw(2, range(n))
    assert any(not torch.equal(forward[i], other_epoch[i]) for i in range(n))
    other_seed = MaskedTokens(textsynth.train, masking, seed=6, split="train", epoch=1)
    assert any(not torch.equal(forward[i], other_seed[i][1]) for i in range(n))
    # the draws come from the documented generator of (seed, split, epoch, index)
    inputs, _ = textsynth.train[3]
    want = mask_tokens(
        inputs["input_ids"], inputs["attention_mask"], masking, masking_rng(5, "train", 1, 3)
    )
    assert torch.equal(forward[3], want[1])


def test_masking_needs_text_with_a_mask_token():
    with pytest.raises(ConfigError, match="needs a text dataset"):
        masking_for(SimpleNamespace(name="digits", modality="image"))
    with pytest.raises(ConfigError, match="has no \\[MASK\\] token"):
        masking_for(SimpleNamespace(name="hf", modality="text", mask_id=None))
    with pytest.raises(ConfigError, match="mlm_probability"):
        Masking(MASK, SPECIALS, VOCAB, probability=1.5)


def reference_token_loss(logits, targets):
    """Mean of -log softmax(logits)[target] over the scored positions, position by position."""
    terms = []
    for b in range(targets.shape[0]):
        for t in range(targets.shape[1]):
            if targets[b, t] != IGNORE_INDEX:
                row = logits[b, t].double()
                terms.append(float(torch.logsumexp(row, 0) - row[targets[b, t]]))
    return sum(terms) / len(terms)


def test_the_token_loss_and_accuracy_score_masked_positions_only():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 5, 7, generator=g)
    targets = torch.full((3, 5), IGNORE_INDEX)
    targets[0, 1], targets[1, 3], targets[2, 0], targets[2, 4] = 2, 6, 0, 0
    loss = loss_of(logits, targets, None, 0.0)
    assert loss.item() == pytest.approx(reference_token_loss(logits, targets), rel=1e-6)
    totals = Totals()
    totals.add(loss, logits, targets)
    hits = sum(
        int(logits[b, t].argmax() == targets[b, t]) for b, t in ((0, 1), (1, 3), (2, 0), (2, 4))
    )
    assert (totals.count, totals.samples, int(totals.correct)) == (4, 3, hits)
    kept_logits, kept = scored(logits, targets)
    assert kept.tolist() == [2, 6, 0, 0] and torch.equal(kept_logits[1], logits[1, 3])
    labels = torch.tensor([1, 0, 2])  # sequence labels: scored as they are
    assert torch.equal(scored(logits[:, 0], labels)[1], labels)


@pytest.mark.requires("transformers")
def test_evaluation_of_a_masked_lm_is_per_masked_token(textsynth):
    torch.manual_seed(0)
    model = models.create("hf:bert-tiny-text", num_classes=4, head="mlm").eval()
    data = MaskedTokens(textsynth.test, masking_for(textsynth), seed=0, split="test")
    loss, acc = evaluate_on(model, data, torch.device("cpu"), batch_size=3)
    terms, hits = [], []
    for i in range(len(data)):
        x, y = data[i]
        with torch.no_grad():
            out = model(x["input_ids"][None], attention_mask=x["attention_mask"][None])[0]
        for t in torch.nonzero(y != IGNORE_INDEX).flatten().tolist():
            row = out[t].double()
            terms.append(float(torch.logsumexp(row, 0) - row[y[t]]))
            hits.append(int(out[t].argmax() == y[t]))
    assert loss == pytest.approx(np.mean(terms), rel=1e-5)
    assert acc == pytest.approx(np.mean(hits))


@pytest.mark.requires("transformers")
def test_the_masked_lm_head_rebuilds_from_its_record():
    torch.manual_seed(0)
    model = models.create("hf:bert-tiny-text", num_classes=4, head="mlm")
    assert type(model.net).__name__ == "BertForMaskedLM" and model.config["head"] == "mlm"
    again = models.from_config(model.config)
    assert type(again.net).__name__ == "BertForMaskedLM"
    models.load_weights(again, model.state_dict())  # strict: the same keys and shapes
    ids = torch.randint(4, 100, (2, 6))
    assert model(ids).shape == (2, 6, 512)
    assert "head" not in models.create("hf:bert-tiny-text", num_classes=4).config
    with pytest.raises(ConfigError, match="no masked-language-model head"):
        models.create("hf:vit-tiny-digits", num_classes=10, head="mlm")


def test_objective_checks(workdir):
    with pytest.raises(ConfigError, match="objective must be one of"):
        TrainConfig(objective="clm")
    with pytest.raises(ConfigError, match="mlm_probability"):
        TrainConfig(objective="mlm", mlm_probability=0.0)
    bad = [
        (dict(model="cct_2_3x2_32", dataset="textsynth"), "Hugging Face BERT-style encoder"),
        (dict(model="hf:bert-tiny-text", dataset="digits"), "needs a text dataset"),
    ]
    for values, message in bad:
        with pytest.raises(ConfigError, match=message):
            train(TrainConfig(objective="mlm", device="cpu", epochs=1, **values))
    assert not (workdir / "mlruns").exists()  # refused before any run was created


def test_mlm_recipes():
    cpu, gpu = recipes.config("mlm-cpu"), recipes.config("mlm-bert6-gpu")
    assert (cpu.objective, cpu.model, cpu.dataset) == ("mlm", "hf:bert-tiny-text", "textsynth")
    assert gpu.model == "hf:bert-6" and gpu.dataset_options["max_length"] == 128
    assert gpu.mlm_probability == cpu.mlm_probability == 0.15
    # a --data-option adds to the recipe's dataset options instead of replacing them
    merged = recipes.config("mlm-cpu", dataset_options={"num_super": 2})
    assert merged.dataset_options == {**cpu.dataset_options, "num_super": 2}
    assert merged.dataset_options["max_length"] == 32
    assert "num_super" not in recipes.config("mlm-cpu").dataset_options


@pytest.mark.slow  # logs a training run
def test_snp_token_flags_are_refused_where_they_do_not_apply(workdir, capsys, fake_training_run):
    run_id = fake_training_run()
    assert cli.main(["snp", run_id, "--readout", "token", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pre-trained as a masked language model" in err[0]
    assert cli.main(["snp", run_id, "--tokens", "5", "--no-progress"]) == 2
    assert "--tokens K is for --readout token" in capsys.readouterr().err
    assert cli.main(["snp", run_id, "--readout", "token", "--tokens", "0"]) == 2
