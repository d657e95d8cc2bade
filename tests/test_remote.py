"""nnsight remote execution: remote="local" (serialising dry run) equals local tracing; a
remote adapter holds no weights and refuses the steps that need them."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from tiny_models import TEXTS, images, tiny

from narrowgate_utils import models
from narrowgate_utils.interventions import knockout_attention, patch_activation
from narrowgate_utils.tracing import collect_attention, collect_residual, last_logits, traced


def remote_twin(adapter, remote):
    """A second adapter on the same model whose nnsight traces run with ``remote``."""
    return type(adapter)(adapter.model, adapter.processor, adapter.model_id, remote=remote)


@pytest.mark.parametrize("family", ["chameleon", "llava"])
def test_local_simulation_of_remote_traces_matches_local_traces(family):
    local = tiny(family)
    simulated = remote_twin(local, "local")
    pictures = [Image.fromarray(a) for a in images(family, 2)]
    batch = local.build_batch(pictures, TEXTS)
    for positions in ("eoi", "text_last"):
        torch.testing.assert_close(collect_residual(simulated, batch, positions), collect_residual(local, batch, positions))
    torch.testing.assert_close(collect_attention(simulated, batch, layers=[0]), collect_attention(local, batch, layers=[0]))
    plain = local.model(**batch.inputs, use_cache=False).logits[:, -1]
    torch.testing.assert_close(last_logits(simulated, batch), plain.detach())
    other = local.build_batch(pictures[::-1], TEXTS)
    torch.testing.assert_close(patch_activation(simulated, other, batch, "eoi", [0]),
                               patch_activation(local, other, batch, "eoi", [0]))
    assert type(traced(simulated)).__name__ == "HuggingFaceModel" and type(traced(local)).__name__ == "NNsight"


def test_remote_load_builds_a_meta_model_and_refuses_local_steps(tmp_path):
    original = tiny("chameleon")
    original.model.save_pretrained(tmp_path)
    original.processor.save_pretrained(tmp_path)
    adapter = models.load(tmp_path, remote=True)
    assert adapter.remote is True and not adapter.has_weights and original.has_weights
    assert all(p.is_meta for p in adapter.model.parameters())
    assert traced(adapter).repo_id == str(tmp_path)  # the identity a remote backend resolves
    batch = adapter.build_batch([Image.fromarray(images("chameleon", 1)[0])], TEXTS[:1])
    assert batch.inputs["input_ids"].shape == original.build_batch(
        [Image.fromarray(images("chameleon", 1)[0])], TEXTS[:1]).inputs["input_ids"].shape
    with pytest.raises(ValueError, match="remote=True"):
        adapter.generate(batch)
    with pytest.raises(ValueError, match="Attention knockout"):
        with knockout_attention(adapter, batch, "eoi", "text"):
            pass
    with pytest.raises(ValueError, match="remote must be"):
        models.load(tmp_path, remote=1)
    local = models.load(tmp_path, remote="local")
    assert local.has_weights and local.remote == "local"
    np.testing.assert_allclose(collect_residual(local, batch, "eoi").numpy(),
                               collect_residual(original, batch, "eoi").numpy(), rtol=1e-5, atol=1e-6)
