"""Smoke executions of every chapter notebook on the known-answer toy models.

`toy-gated` has a planted narrow gate (text reads the image only through [EOI]) and
`toy-distributed` the opposite (text never reads [EOI]). Each notebook is executed with
papermill in a small configuration, and the assertions read the CSV files it saved: the
analysis must tell the two models apart the way the paper tells Chameleon from Pixtral.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import papermill
import pytest

ROOT = Path(__file__).resolve().parents[1]
MODELS = "toy-gated,toy-distributed"
GATED, DISTRIBUTED = "toy-gated", "toy-distributed"

# the first test trains the two known-answer models (several minutes on 2 cores) inside its fixture
pytestmark = [pytest.mark.slow, pytest.mark.timeout(2400)]


@pytest.fixture(scope="module")
def toy_models() -> None:
    """Train (or reuse from the cache) the two known-answer models once, two at a time, and the
    vision tower chapter 08's image classifier reads (loading a model never trains it)."""
    from narrowgate_utils.training import prepare_components, train_all

    train_all((GATED, DISTRIBUTED), device=None, force=False, workers=2)
    prepare_components(("toy-nonnative",))


def run_notebook(name: str, tmp_path: Path, **parameters) -> Path:
    """Execute notebooks/<name>.ipynb into tmp_path and return its results folder."""
    papermill.execute_notebook(
        str(ROOT / "notebooks" / f"{name}.ipynb"), str(tmp_path / f"{name}.ipynb"),
        parameters={"model_id": MODELS, "output_dir": str(tmp_path / "results"), "cache_dir": str(tmp_path / "cache"),
                    **parameters},
        kernel_name="python3", cwd=str(ROOT), progress_bar=False,
    )
    return tmp_path / "results" / name


def by_model(frame: pd.DataFrame, model: str) -> pd.DataFrame:
    return frame[frame["model"] == model]


def test_modality_gap_notebook(toy_models, tmp_path):
    results = run_notebook("01_modality_gap", tmp_path, n_samples=120, min_cluster_size=10)
    gap = pd.read_csv(results / "modality_gap.csv")
    homogeneity = pd.read_csv(results / "homogeneity.csv")
    for model in (GATED, DISTRIBUTED):
        part = by_model(gap, model)
        assert len(part) == 4, "one row per decoder layer"
        assert ((part["q1"] <= part["median"]) & (part["median"] <= part["q3"])).all()
        assert part["median"].between(-1, 1).all() and (part["q1"] < part["q3"]).all(), "signed cosine with a spread"
        assert by_model(homogeneity, model)["homogeneity"].dropna().between(0, 1).all()
    assert (results / "fig2_modality_gap.png").stat().st_size > 1000


def test_cross_modal_attention_notebook_finds_the_gate(toy_models, tmp_path):
    results = run_notebook("02_cross_modal_attention", tmp_path, n_samples=120)
    shares = pd.read_csv(results / "attention_shares.csv")
    totals = shares.groupby(["model", "layer"])["share"].sum()
    assert totals.between(0.999, 1.001).all(), "shares of each layer sum to 1 (eq. 2 normalisation)"
    eoi = shares[shares["token"] == "[EOI]"].groupby("model")["share"].mean()
    assert eoi[GATED] > 0.5, f"the gated model should send most text→image attention to [EOI], got {eoi[GATED]:.2f}"
    assert eoi[DISTRIBUTED] < 0.1, f"the distributed model should ignore [EOI], got {eoi[DISTRIBUTED]:.2f}"


def test_neighborhood_overlap_notebook_localises_the_class(toy_models, tmp_path):
    results = run_notebook("03_neighborhood_overlap", tmp_path, n_samples=240, k=10, max_internal=8)
    chi = pd.read_csv(results / "neighborhood_overlap.csv")
    last = chi[chi["layer"] == chi["layer"].max()].pivot_table(index="model", columns="token", values="chi")
    assert last.loc[GATED, "[EOI]"] > 0.5, "[EOI] of the gated model must carry the class"
    assert last.loc[GATED, "[EOI]"] > last.loc[DISTRIBUTED, "[EOI]"] + 0.2


def test_knockout_notebook_separates_gated_from_distributed(toy_models, tmp_path):
    results = run_notebook("04_knockout", tmp_path, n_samples=60, ablations=["none", "eoi", "img_to_text"], k=10,
                           ablate_attended=False,
                           max_new_tokens_vqa=4, max_new_tokens_caption=16, max_new_tokens_class=4)
    table = pd.read_csv(results / "knockout_table.csv").set_index(["model", "ablation"])
    for metric in ("vqa_accuracy", "class_accuracy"):
        gated_base, gated_eoi = table.loc[(GATED, "none"), metric], table.loc[(GATED, "eoi"), metric]
        gated_img = table.loc[(GATED, "img_to_text"), metric]
        assert gated_base > 0.6, f"gated baseline {metric} too low to test anything: {gated_base:.2f}"
        assert gated_base - gated_eoi > 2 * (gated_base - gated_img) + 0.2, f"{metric}: [EOI] knockout must hurt the gated model most"
        dist_base, dist_eoi = table.loc[(DISTRIBUTED, "none"), metric], table.loc[(DISTRIBUTED, "eoi"), metric]
        assert dist_base - dist_eoi < 0.1, f"{metric}: the distributed model must not depend on [EOI]"
    progressive = pd.read_csv(results / "progressive_knockout.csv")
    full = progressive[(progressive["model"] == GATED) & (progressive["window"] == 4)].set_index("ablation")["chi"]
    assert full["eoi"] < full["img_to_text"], "blocking [EOI] in every layer must remove more class information"


def test_steering_notebook_switches_only_through_the_gate(toy_models, tmp_path):
    results = run_notebook("05_steering", tmp_path, n_samples=1000, per_pair=4)
    steer = pd.read_csv(results / "steering.csv")
    peak = steer.groupby(["model", "site", "position"])["switch_rate"].max()
    assert peak[(GATED, "resid_in", "eoi")] > 0.6, "patching [EOI] must switch the gated model's class"
    assert peak[(DISTRIBUTED, "resid_in", "eoi")] < 0.3, "patching [EOI] must not steer the distributed model"
    assert peak[(GATED, "resid_in", "last_image")] < peak[(GATED, "resid_in", "eoi")]


def test_masked_finetuning_notebook_widens_the_gate(toy_models, tmp_path):
    results = run_notebook("06_masked_finetuning", tmp_path, model_id=GATED, n_train=300, n_samples=60, k=10,
                           max_new_tokens_vqa=4, max_new_tokens_caption=16, max_new_tokens_class=4)
    table = pd.read_csv(results / "before_after.csv")
    assert set(table["mode"]) == {"pre_softmax", "post_softmax"}
    table = table[table["mode"] == "post_softmax"]
    acc = table.pivot_table(index="variant", columns="ablation", values="class_accuracy")
    assert set(acc.index) == {"before", "masked", "control"}
    assert acc.loc["before", "eoi"] < 0.3, "the planted gate must collapse under [EOI] knockout before fine-tuning"
    assert acc.loc["masked", "eoi"] > acc.loc["before", "eoi"] + 0.3, "masked fine-tuning must reroute around [EOI]"
    assert acc.loc["control", "eoi"] < acc.loc["masked", "eoi"], "the unmasked control must stay more fragile"


def test_gate_factors_notebook_calibrates_on_known_answers(toy_models, tmp_path):
    results = run_notebook("07_what_makes_a_gate", tmp_path, variants="vq-all-scratch", seeds=[0], steps=60,
                           n_samples=48, k=3, workers=1, cache_dir=str(tmp_path / "gate_factors"))
    calibration = pd.read_csv(results / "gate_factors_calibration.csv").set_index("model")
    assert calibration.loc[GATED, "gate_score"] > 0.8
    assert calibration.loc[DISTRIBUTED, "gate_score"] < 0.2
    per_model = pd.read_csv(results / "gate_factors_per_model.csv")
    assert list(per_model["variant"]) == ["vq-all-scratch"]


def test_text_to_image_notebook_measures_caption_information(toy_models, tmp_path):
    # toy-gated is the toy-native recipe (also trained on caption → image) with a planted image→text route
    results = run_notebook("08_text_to_image", tmp_path, model_id=GATED, n_samples=40, n_classifier_train=200,
                           ablations=["none", "last_text", "all_text"], knockout_modes=["pre_softmax"], k=3)
    knockout = pd.read_csv(results / "knockout.csv").set_index("ablation")
    assert knockout.loc["none", "caption_information"] > 0.5, "the caption must inform the image codes"
    assert abs(knockout.loc["all_text", "caption_information"]) < 1e-3, "blocking every caption token removes it"
