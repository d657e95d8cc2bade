"""Real-dataset loaders on tiny fixture folders in each official layout (no downloads)."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from narrowgate_utils.data.coco import load_coco_karpathy
from narrowgate_utils.data.imagenet import display_name, imagenet_classes, imagenet_patching_pairs, lemma, load_imagenet
from narrowgate_utils.datasets import (DATASETS, dataset_classes, load_samples, load_training_mix, patching_pairs,
                                       seeded_subset)

from dataset_fixtures import LLAVA_CONVERSATIONS, write_image, write_llava_instruct, write_vqav2

IMAGES_PER_CLASS = 4


def _wnid(i: int) -> str:
    return f"n{10_000_000 + i:08d}"


@pytest.fixture(scope="module")
def imagenet_dir(tmp_path_factory) -> Path:
    """Every paper class (+ the patching classes) as a wnid folder of 4 PNGs whose pixel encodes (class, image)."""
    root = tmp_path_factory.mktemp("imagenet")
    names = list(dict.fromkeys(imagenet_classes("paper") + imagenet_classes("patching")))
    lines = ["n09999999 crane, Grus americana"]  # a class outside the subset
    for i, name in enumerate(names):
        # mapping entries as ImageNet writes them: capitalised first name with spaces, then synonyms
        lines.append(f"{_wnid(i)} {lemma(name).replace('_', ' ').title()}, synonym {i}")
        for j in range(IMAGES_PER_CLASS):
            write_image(root / "train" / _wnid(i) / f"{_wnid(i)}_{j}.png", (i, 10 * j, 200))
    (root / "LOC_synset_mapping.txt").write_text("\n".join(lines) + "\n")
    return root


def test_shipped_class_lists_match_paper():
    classes = imagenet_classes()
    assert len(classes) == 100 and len(set(classes)) == 100
    assert classes[0] == "staffordshire_bullterrier.n.01" and classes[-1] == "kelpie.n.02"
    assert "loggerhead.n.02" in classes and not any(c.startswith("Ioggerhead") for c in classes)
    pairs = imagenet_patching_pairs()
    assert len(pairs) == 10 and len({c for p in pairs for c in p}) == 20
    assert pairs[0] == ("american_alligator.n.01", "arabian_camel.n.01")
    # four patching classes are also among the 100 (bee eater, macaw, tailed frog, arabian camel)
    assert len(set(classes) & set(imagenet_classes("patching"))) == 4
    assert patching_pairs("imagenet")[-1] == ("tailed frog", "trilobite")
    assert display_name("black-and-tan_coonhound.n.01") == "black-and-tan coonhound"
    assert dataset_classes("imagenet", "patching")[:2] == ["american alligator", "arabian camel"]


def test_imagenet_per_class_sampling(imagenet_dir):
    samples = load_imagenet(imagenet_dir, per_class=2, seed=3)
    assert len(samples) == 200
    assert np.bincount([s.label for s in samples]).tolist() == [2] * 100
    first = samples[0]
    assert first.class_name == "staffordshire bullterrier" and first.meta["wnid"] == _wnid(0)
    assert first.meta["wordnet_name"] == "staffordshire_bullterrier.n.01"
    for s in samples[::37]:  # the pixel proves the file came from the folder of its class
        class_index = int(s.meta["wnid"][1:]) - 10_000_000
        j = int(s.uid.rsplit("_", 1)[1])
        assert s.image.mode == "RGB" and s.image.getpixel((0, 0)) == (class_index, 10 * j, 200)
    assert [s.uid for s in load_imagenet(imagenet_dir, per_class=2, seed=3)] == [s.uid for s in samples]
    assert [s.uid for s in load_imagenet(imagenet_dir, per_class=2, seed=4)] != [s.uid for s in samples]
    # a class gets the same images in both class sets (per-class seeding)
    patching = load_imagenet(imagenet_dir, per_class=2, seed=3, classes="patching")
    assert len(patching) == 40 and {s.label for s in patching} == set(range(20))
    assert [s.uid for s in patching if s.class_name == "macaw"] == [s.uid for s in samples if s.class_name == "macaw"]


def test_imagenet_dispatcher_and_subset(imagenet_dir):
    with pytest.warns(UserWarning, match="fewer than 100 images"):
        everything = load_samples("imagenet", data_dir=str(imagenet_dir))
    assert len(everything) == 100 * IMAGES_PER_CLASS
    with pytest.warns(UserWarning):
        subset = load_samples("imagenet", n=7, seed=42, data_dir=imagenet_dir, classes="patching")
    assert len(subset) == 7 and [s.label for s in subset] == sorted(s.label for s in subset)
    assert all(s.class_name in dataset_classes("imagenet", "patching") for s in subset)


def test_imagenet_class_index_json(tmp_path, imagenet_dir):
    names = imagenet_classes("patching")
    index = {_wnid(100 + i): lemma(n) for i, n in enumerate(names)}
    (tmp_path / "class_index.json").write_text(json.dumps(index))
    for i in range(len(names)):
        write_image(tmp_path / "val" / _wnid(100 + i) / "ILSVRC2012_val_1.JPEG", (i, 0, 0))
    samples = load_imagenet(tmp_path, split="val", classes="patching", per_class=1)
    assert [s.class_name for s in samples[:3]] == ["american alligator", "arabian camel", "bald eagle"]
    assert samples[2].uid == f"{_wnid(102)}/ILSVRC2012_val_1"
    # Keras form {index: [wnid, name]}
    (tmp_path / "class_index.json").write_text(json.dumps({str(i): [w, n] for i, (w, n) in enumerate(index.items())}))
    assert len(load_imagenet(tmp_path, split="val", classes="patching", per_class=1)) == 20


def test_imagenet_errors(tmp_path, imagenet_dir):
    with pytest.raises(ValueError, match="LOC_synset_mapping.txt or .*class_index.json"):
        load_imagenet(tmp_path)
    (tmp_path / "class_index.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_imagenet(tmp_path)
    (tmp_path / "class_index.json").write_text(json.dumps({"n01440764": "tench"}))
    with pytest.raises(ValueError, match=r"99 class\(es\) not found"):
        load_imagenet(tmp_path)
    with pytest.raises(ValueError, match="expected .*val with one sub-folder per wnid"):
        load_imagenet(imagenet_dir, split="val")
    with pytest.raises(ValueError, match="Unknown ImageNet class set"):
        load_imagenet(imagenet_dir, classes="birds")


def _captions(k: int) -> list[dict[str, str]]:
    return [{"raw": f" caption {c} of image {k} ", "tokens": []} for c in range(5)]


@pytest.fixture(scope="module")
def flickr_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("flickr30k")
    splits = ["test", "train", "test", "val", "test", "test"]
    entries = [{"filename": f"{1000 + k}.jpg", "split": s, "imgid": k, "sentences": _captions(k)} for k, s in enumerate(splits)]
    (root / "dataset_flickr30k.json").write_text(json.dumps({"images": entries, "dataset": "flickr30k"}))
    for k in range(len(splits)):
        write_image(root / "flickr30k-images" / f"{1000 + k}.jpg", (40 * k, 0, 0), mode="L" if k == 0 else "RGB")
    return root


def test_flickr30k_karpathy(flickr_dir):
    test = load_samples("flickr30k", data_dir=flickr_dir)
    assert [s.uid for s in test] == ["1000", "1002", "1004", "1005"]
    assert test[0].captions == tuple(f"caption {c} of image 0" for c in range(5))
    assert test[0].image.mode == "RGB" and test[0].label == -1 and test[0].meta["image_id"] == 0
    assert len(load_samples("flickr30k", split="all", data_dir=flickr_dir)) == 6
    assert [s.uid for s in load_samples("flickr30k", split="validation", data_dir=flickr_dir)] == ["1003"]
    two = [s.uid for s in load_samples("flickr30k", n=2, seed=5, data_dir=flickr_dir)]
    assert two == [s.uid for s in load_samples("flickr30k", n=2, seed=5, data_dir=flickr_dir)]
    expected = np.sort(np.random.default_rng(5).choice(4, size=2, replace=False))
    assert two == [["1000", "1002", "1004", "1005"][i] for i in expected]
    with pytest.warns(UserWarning, match="only 4 are available"):
        assert len(load_samples("flickr30k", n=2000, data_dir=flickr_dir)) == 4


def test_flickr30k_token_file_and_errors(tmp_path, flickr_dir):
    with pytest.raises(ValueError, match="dataset_flickr30k.json .* or .*results_20130124.token"):
        load_samples("flickr30k", data_dir=tmp_path)
    lines = [f"{name}.jpg#{c}\tA {name} caption {c}." for name in ("77", "55") for c in range(5)]
    (tmp_path / "results_20130124.token").write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match="split='all'"):
        load_samples("flickr30k", data_dir=tmp_path)
    with pytest.raises(ValueError, match="Flickr30k image folder: expected a folder .*flickr30k-images"):
        load_samples("flickr30k", split="all", data_dir=tmp_path)
    write_image(tmp_path / "flickr30k-images" / "77.jpg", (0, 0, 0))
    with pytest.raises(ValueError, match=r"Missing image: expected .*55\.jpg"):
        load_samples("flickr30k", split="all", data_dir=tmp_path)
    write_image(tmp_path / "flickr30k-images" / "55.jpg", (0, 0, 0))
    samples = load_samples("flickr30k", split="all", data_dir=tmp_path)
    assert [s.uid for s in samples] == ["77", "55"] and samples[1].captions[4] == "A 55 caption 4."
    (tmp_path / "results_20130124.token").write_text("77.jpg caption without tab\n")
    with pytest.raises(ValueError, match="line 1"):
        load_samples("flickr30k", split="all", data_dir=tmp_path)
    (tmp_path / "dataset_flickr30k.json").write_text('{"images": [')
    with pytest.raises(ValueError, match="not valid JSON"):
        load_samples("flickr30k", data_dir=tmp_path)
    (tmp_path / "dataset_flickr30k.json").write_text(json.dumps({"images": [{"filename": "77.jpg", "split": "test"}]}))
    with pytest.raises(ValueError, match='lacks "filename", "split" or "sentences"'):
        load_samples("flickr30k", data_dir=tmp_path)
    with pytest.raises(ValueError, match="Unknown Karpathy split"):
        load_samples("flickr30k", split="dev", data_dir=flickr_dir)


def test_coco_karpathy(tmp_path):
    entries = [{"filepath": "val2014" if k < 3 else "train2014", "filename": f"COCO_x_{k:012d}.jpg", "cocoid": 500 + k,
                "split": ["test", "restval", "test", "train"][k], "sentences": _captions(k)} for k in range(4)]
    (tmp_path / "dataset_coco.json").write_text(json.dumps({"images": entries, "dataset": "coco"}))
    for entry in entries:
        write_image(tmp_path / entry["filepath"] / entry["filename"], (1, 2, 3))
    test = load_samples("coco_karpathy", data_dir=tmp_path)
    assert [s.meta["image_id"] for s in test] == [500, 502] and test[1].captions[0] == "caption 0 of image 2"
    assert test[0].meta["path"].endswith("val2014/COCO_x_000000000000.jpg")
    assert [s.meta["image_id"] for s in load_coco_karpathy(tmp_path, split="restval")] == [501]
    (tmp_path / "dataset_coco.json").write_text(json.dumps([1, 2]))
    with pytest.raises(ValueError, match='Malformed Karpathy caption file .*"images" list'):
        load_samples("coco_karpathy", data_dir=tmp_path)
    (tmp_path / "dataset_coco.json").unlink()
    with pytest.raises(ValueError, match="expected .*dataset_coco.json .*caption_datasets.zip"):
        load_samples("coco_karpathy", data_dir=tmp_path)


def test_vqav2(tmp_path):
    write_vqav2(tmp_path)
    samples = load_samples("vqav2", data_dir=tmp_path)
    assert [s.uid for s in samples] == ["1000", "1001", "1002", "1003", "1004"]
    item = samples[0].vqa[0]
    assert item.question == "Question 0?" and item.answer_type == "yes/no"
    assert item.answers == tuple(f"ans0-{a}" for a in range(10))
    assert all(len(s.vqa) == 1 and len(s.vqa[0].answers) == 10 for s in samples)
    assert samples[2].meta["image_id"] == 262148 and samples[2].image is samples[0].image
    assert samples[1].meta["path"].endswith("val2014/COCO_val2014_000000393225.jpg")
    three = load_samples("vqav2", split="validation", n=3, seed=42, data_dir=tmp_path)
    expected = np.sort(np.random.default_rng(42).choice(5, size=3, replace=False))
    assert [s.uid for s in three] == [str(1000 + i) for i in expected]


def test_vqav2_errors(tmp_path):
    with pytest.raises(ValueError, match="expected .*v2_OpenEnded_mscoco_val2014_questions.json .*visualqa.org"):
        load_samples("vqav2", data_dir=tmp_path)
    write_vqav2(tmp_path, n_answers=9)
    with pytest.raises(ValueError, match="has 9 answers, expected 10"):
        load_samples("vqav2", data_dir=tmp_path)
    (tmp_path / "v2_mscoco_val2014_annotations.json").unlink()
    with pytest.raises(ValueError, match=r"expected .*v2_mscoco_val2014_annotations\.json \(download the VQAv2 val annotations"):
        load_samples("vqav2", data_dir=tmp_path)
    (tmp_path / "v2_mscoco_val2014_annotations.json").write_text(json.dumps({"annotations": []}))
    with pytest.raises(ValueError, match="no annotation for question"):
        load_samples("vqav2", data_dir=tmp_path)
    with pytest.raises(ValueError, match="Unknown VQAv2 split"):
        load_samples("vqav2", split="test", data_dir=tmp_path)


def test_dispatcher_errors(tmp_path):
    with pytest.raises(ValueError, match="supported datasets: toy, imagenet, flickr30k, coco_karpathy, vqav2"):
        load_samples("cifar10")
    for dataset in DATASETS[1:]:
        with pytest.raises(ValueError, match="pass data_dir="):
            load_samples(dataset)
    with pytest.raises(ValueError, match="expected a folder .*nowhere"):
        load_samples("vqav2", data_dir=tmp_path / "nowhere")
    with pytest.raises(ValueError, match="applies only to dataset='imagenet'"):
        load_samples("flickr30k", data_dir=tmp_path, classes="patching")
    with pytest.raises(ValueError, match="has none"):
        patching_pairs("vqav2")


def test_seeded_subset():
    picked = seeded_subset(10, 4, seed=1, what="x")
    assert picked.tolist() == sorted(np.random.default_rng(1).choice(10, size=4, replace=False).tolist())
    assert seeded_subset(10, None, 1, "x").tolist() == list(range(10))
    assert seeded_subset(10, 0, 1, "x").tolist() == []


@pytest.mark.skipif(importlib.util.find_spec("narrowgate_utils.data.toy") is None, reason="toy world not written yet")
def test_toy_delegation():
    from narrowgate_utils.data.toy import TOY_PATCHING_PAIRS, toy_dataset
    assert [s.uid for s in load_samples("toy", n=3)] == [s.uid for s in toy_dataset("test", 3, 42)]
    assert patching_pairs("toy") == [tuple(p) for p in TOY_PATCHING_PAIRS]


def test_llava_instruct(tmp_path):
    write_llava_instruct(tmp_path)
    samples = load_samples("llava_instruct", data_dir=tmp_path)
    assert [s.uid for s in samples] == [uid for uid, _, _ in LLAVA_CONVERSATIONS]
    # the <image> placeholder is gone wherever it stood; turns stay paired and in order
    assert samples[0].instructions == (("What color is the bus?", "The bus is red."), ("Is it moving?", "No, it is parked."))
    assert samples[1].instructions == (("Describe the image.", "A giraffe eats leaves."),)
    assert samples[0].image.getpixel((0, 0)) == samples[3].image.getpixel((0, 0)) != samples[1].image.getpixel((0, 0))
    assert samples[0].label == -1 and not samples[0].vqa and samples[0].meta["path"].endswith("train2017/000000000009.jpg")
    two = load_samples("llava_instruct", n=2, seed=42, data_dir=tmp_path)
    expected = np.sort(np.random.default_rng(42).choice(4, size=2, replace=False))
    assert [s.uid for s in two] == [LLAVA_CONVERSATIONS[i][0] for i in expected]


def test_llava_instruct_errors(tmp_path):
    with pytest.raises(ValueError, match=r"expected .*llava_instruct_150k\.json .*LLaVA-Instruct-150K"):
        load_samples("llava_instruct", data_dir=tmp_path)
    write_llava_instruct(tmp_path)
    with pytest.raises(ValueError, match="only a 'train' split"):
        load_samples("llava_instruct", split="val", data_dir=tmp_path)
    (tmp_path / "train2017" / "000000000030.jpg").unlink()
    with pytest.raises(ValueError, match=r"expected .*train2017/000000000030\.jpg .*COCO 2017 train"):
        load_samples("llava_instruct", data_dir=tmp_path)
    entries = json.loads((tmp_path / "llava_instruct_150k.json").read_text())
    entries[0]["conversations"] = entries[0]["conversations"][:3]  # a question without its answer
    (tmp_path / "llava_instruct_150k.json").write_text(json.dumps(entries))
    with pytest.raises(ValueError, match="entry 0 does not alternate human/gpt turns"):
        load_samples("llava_instruct", data_dir=tmp_path)


def test_training_mix(tmp_path):
    write_llava_instruct(tmp_path / "llava")
    write_vqav2(tmp_path / "vqa", subtype="train2014")
    by_list = load_training_mix("llava_instruct+vqav2", n=3, seed=1, data_dir=[tmp_path / "llava", tmp_path / "vqa"])
    by_map = load_training_mix(["llava_instruct", "vqav2"], n=3, seed=1,
                               data_dir={"vqav2": tmp_path / "vqa", "llava_instruct": tmp_path / "llava"})
    by_string = load_training_mix("llava_instruct+vqav2", n=3, seed=1, data_dir=f"{tmp_path / 'llava'}+{tmp_path / 'vqa'}")
    uids = [s.uid for s in by_list]
    assert uids == [s.uid for s in by_map] == [s.uid for s in by_string] and len(uids) == 6
    assert [s.meta["dataset"] for s in by_list] == ["llava_instruct"] * 3 + ["vqav2"] * 3
    assert all(s.meta["split"] == "train" for s in by_list)
    toy = load_training_mix("toy", n=4, seed=0)
    assert [s.uid for s in toy] == [s.uid for s in load_samples("toy", split="train", n=4, seed=0)]
    with pytest.raises(ValueError, match=r"gives 1 folder\(s\) for the 2 datasets"):
        load_training_mix("llava_instruct+vqav2", data_dir=tmp_path / "llava")
    with pytest.raises(ValueError, match=r"no folder for \['vqav2'\]"):
        load_training_mix("llava_instruct+vqav2", data_dir={"llava_instruct": tmp_path / "llava"})
    with pytest.raises(ValueError, match="distinct dataset names"):
        load_training_mix("vqav2+vqav2", data_dir=[tmp_path, tmp_path])
    with pytest.raises(ValueError, match="Unknown dataset 'llava'"):
        load_training_mix("llava+vqav2", data_dir=[tmp_path, tmp_path])
