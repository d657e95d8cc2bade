"""The data/ recipes: each states a layout the loader reads, from the default download folder.

Also the shipped ImageNet wnids (class folders alone suffice), the ImageNet fetch script on fake
archives, and the nlphuji/flickr30k CSV layout with ``split="all"``.
"""
from __future__ import annotations

import fnmatch
import io
import json
import re
import shutil
import subprocess
import tarfile
import zipfile
from collections.abc import Callable
from pathlib import Path, PurePosixPath

import numpy as np
import pytest

from narrowgate_utils.data.flickr30k import load_flickr30k
from narrowgate_utils.data.imagenet import (imagenet_classes, lemma, load_imagenet, resolve_wnids, shipped_wnids)
from narrowgate_utils.datasets import DATA_ENV, DATASETS, default_data_dir, load_samples

from dataset_fixtures import (FLICKR_CSV_SPLITS, LLAVA_CONVERSATIONS, write_coco_karpathy, write_flickr30k_csv,
                              write_image, write_imagenet_wnid_folders, write_llava_instruct, write_vqav2)

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "data"
REAL = [name for name in DATASETS if name != "toy"]
SECTIONS = ("## Source", "## Licence", "## Layout", "## Fetch", "## Check", "## Paper parameters")
#: the COCO image folders that the fetch scripts keep in <area>/coco_images/ and symlink
COCO_SUBSETS = ("val2014", "train2014", "train2017")


def recipe_layout(dataset: str) -> list[str]:
    """The globs of the recipe's ```layout block (paths relative to the dataset folder)."""
    blocks = re.findall(r"```layout\n(.*?)```", (DATA / f"{dataset}.md").read_text(), flags=re.S)
    assert len(blocks) == 1, f"data/{dataset}.md needs exactly one ```layout block"
    return [line.strip() for line in blocks[0].splitlines() if line.strip()]


def _matches(path: str, pattern: str) -> bool:
    parts, globs = PurePosixPath(path).parts, PurePosixPath(pattern).parts
    return len(parts) == len(globs) and all(fnmatch.fnmatchcase(p, g) for p, g in zip(parts, globs))


def _fixture_files(root: Path) -> list[str]:
    return sorted(str(path.relative_to(root).as_posix()) for path in root.rglob("*") if path.is_file())


def _vqav2(root: Path) -> None:
    write_vqav2(root)
    write_vqav2(root, subtype="train2014")


#: dataset -> (fixture writer in the official layout, expected sample count of the default split)
FIXTURES: dict[str, tuple[Callable[[Path], None], int]] = {
    "imagenet": (write_imagenet_wnid_folders, 200),
    "flickr30k": (write_flickr30k_csv, FLICKR_CSV_SPLITS.count("test")),  # DEFAULT_SPLITS: Karpathy test
    "coco_karpathy": (write_coco_karpathy, 3),
    "vqav2": (_vqav2, 5),
    "llava_instruct": (write_llava_instruct, len(LLAVA_CONVERSATIONS)),
}


def test_every_dataset_has_a_recipe_and_fetch_script():
    assert sorted(FIXTURES) == sorted(REAL)
    index = (DATA / "README.md").read_text()
    for dataset in REAL:
        recipe, script = DATA / f"{dataset}.md", DATA / f"fetch_{dataset}.sh"
        assert recipe.is_file() and script.is_file(), f"missing data/{dataset}.md or data/fetch_{dataset}.sh"
        assert f"({dataset}.md)" in index and f"fetch_{dataset}.sh" in index
        text = recipe.read_text()
        assert all(section in text for section in SECTIONS), f"data/{dataset}.md lacks one of {SECTIONS}"
        assert "https://" in text and recipe_layout(dataset)
    for script in sorted(DATA.glob("fetch_*.sh")):
        result = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
        assert result.returncode == 0, f"{script.name}: {result.stderr}"
    assert "/data/downloads/" in (REPO / ".gitignore").read_text().split()


@pytest.mark.parametrize("dataset", sorted(FIXTURES))
def test_recipe_layout_loads_from_the_default_folder(dataset, tmp_path, monkeypatch):
    """The fixture holds exactly the recipe's layout, COCO images symlinked as the scripts do,
    and ``load_samples`` finds it through $NARROWGATE_DATA with data_dir=None."""
    write, expected = FIXTURES[dataset]
    folder = tmp_path / dataset
    write(folder)
    layout = recipe_layout(dataset)
    files = _fixture_files(folder)
    assert all(any(_matches(f, g) for g in layout) for f in files), f"fixture files outside the layout {layout}: {files}"
    assert all(any(_matches(f, g) for f in files) for g in layout), f"layout entries without a file: {layout}"
    for subset in COCO_SUBSETS:
        if (folder / subset).is_dir():
            (tmp_path / "coco_images").mkdir(exist_ok=True)
            shutil.move(folder / subset, tmp_path / "coco_images" / subset)
            (folder / subset).symlink_to(Path("..") / "coco_images" / subset)
    monkeypatch.setenv(DATA_ENV, str(tmp_path))
    if dataset == "imagenet":
        with pytest.warns(UserWarning, match="fewer than 100 images"):
            samples = load_samples(dataset)
    else:
        samples = load_samples(dataset)
    assert len(samples) == expected and all(s.meta["path"].startswith(str(folder)) for s in samples)
    if dataset == "vqav2":
        assert [s.meta["split"] for s in load_samples(dataset, split="train")] == ["train"] * 5


def test_default_data_dir(tmp_path, monkeypatch):
    monkeypatch.delenv(DATA_ENV, raising=False)
    assert default_data_dir("vqav2") == REPO / "data" / "downloads" / "vqav2"
    monkeypatch.setenv(DATA_ENV, str(tmp_path))
    assert default_data_dir("flickr30k") == tmp_path / "flickr30k"
    with pytest.raises(ValueError, match="pass data_dir=") as error:
        load_samples("coco_karpathy")
    message = str(error.value)
    assert str(tmp_path / "coco_karpathy") in message and "data/fetch_coco_karpathy.sh" in message
    with pytest.raises(ValueError, match="toy world is generated"):
        default_data_dir("toy")
    with pytest.raises(ValueError, match="Unknown dataset"):
        default_data_dir("cifar10")


# ---------------------------------------------------------------- ImageNet wnids

def test_shipped_wnids_cover_both_class_sets():
    wnids = shipped_wnids()
    classes = set(imagenet_classes("paper")) | set(imagenet_classes("patching"))
    assert set(wnids) == classes and len(classes) == 116
    assert len(set(wnids.values())) == 116 and all(re.fullmatch(r"n\d{8}", w) for w in wnids.values())
    # well-known entries of the ILSVRC-2012 synset list
    assert wnids["tench.n.01"] == "n01440764" and wnids["siberian_husky.n.01"] == "n02110185"
    assert wnids["red_wolf.n.01"] == "n02114712" and wnids["trilobite.n.01"] == "n01768244"
    assert wnids["admiral.n.02"] == "n02276258" and wnids["chow.n.03"] == "n02112137"
    # the shipped ILSVRC entries resolve to the same wnids through the lemma route of a mapping file
    lines = [line for line in (REPO / "narrowgate_utils/resources/imagenet_wnids.tsv").read_text().splitlines()
             if line and not line.startswith("#")]
    entries = {wnid: entry.split(",")[0].strip().lower().replace(" ", "_") for _, wnid, entry in (l.split("\t") for l in lines)}
    names = tuple(sorted(classes))
    assert resolve_wnids(names, entries, REPO) == [wnids[name] for name in names]
    assert all(entries[wnids[name]] == lemma(name) for name in names)


def test_imagenet_class_folders_alone(tmp_path):
    write_imagenet_wnid_folders(tmp_path, per_class=1)
    samples = load_imagenet(tmp_path, classes="patching", per_class=1)
    assert [s.class_name for s in samples[:3]] == ["american alligator", "arabian camel", "bald eagle"]
    assert samples[0].meta["wnid"] == "n01698640" and samples[0].uid == "n01698640/n01698640_0"
    shutil.rmtree(tmp_path / "train" / "n02437312")  # arabian camel
    with pytest.raises(ValueError, match=r"1 class folder\(s\) missing .*n02437312.*fetch_imagenet\.sh"):
        load_imagenet(tmp_path, classes="patching", per_class=1)
    with pytest.raises(ValueError, match="imagenet_wnids.tsv"):
        load_imagenet(tmp_path, split="val")


def _fake_jpeg() -> bytes:
    buffer = io.BytesIO()
    from PIL import Image
    Image.new("RGB", (4, 4), (9, 9, 9)).save(buffer, format="JPEG")
    return buffer.getvalue()


@pytest.mark.skipif(shutil.which("tar") is None or shutil.which("unzip") is None, reason="needs tar and unzip")
@pytest.mark.parametrize("archive", ["ILSVRC2012_img_train.tar", "imagenet-object-localization-challenge.zip"])
def test_fetch_imagenet_script(archive, tmp_path):
    """fetch_imagenet.sh extracts only the shipped classes from either archive into the loader's layout."""
    jpeg, wnids = _fake_jpeg(), list(shipped_wnids().values()) + ["n09999999"]  # one class the package does not use
    path = tmp_path / archive
    if archive.endswith(".tar"):
        with tarfile.open(path, "w") as outer:
            for wnid in wnids:
                inner = io.BytesIO()
                with tarfile.open(fileobj=inner, mode="w") as tar:
                    info = tarfile.TarInfo(f"{wnid}_1.JPEG")
                    info.size = len(jpeg)
                    tar.addfile(info, io.BytesIO(jpeg))
                info = tarfile.TarInfo(f"{wnid}.tar")
                info.size = inner.tell()
                inner.seek(0)
                outer.addfile(info, inner)
    else:
        with zipfile.ZipFile(path, "w") as archive_zip:
            for wnid in wnids:
                archive_zip.writestr(f"ILSVRC/Data/CLS-LOC/train/{wnid}/{wnid}_1.JPEG", jpeg)
    env = {"PATH": "/usr/bin:/bin", DATA_ENV: str(tmp_path / "area"), "MIN_PER_CLASS": "1"}
    result = subprocess.run(["bash", str(DATA / "fetch_imagenet.sh"), str(path)], capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "All checks passed." in result.stdout
    train = tmp_path / "area" / "imagenet" / "train"
    assert sorted(p.name for p in train.iterdir()) == sorted(wnids[:-1])
    assert len(load_imagenet(train.parent, per_class=1)) == 100
    env["MIN_PER_CLASS"] = "2"  # --check alone fails on too few images per class
    result = subprocess.run(["bash", str(DATA / "fetch_imagenet.sh"), "--check"], capture_output=True, text=True, env=env)
    assert result.returncode == 1 and "MISMATCH" in result.stdout


# ---------------------------------------------------------------- Flickr30k, HF nlphuji CSV

def test_flickr30k_hf_csv_splits(tmp_path):
    write_flickr30k_csv(tmp_path)
    everything = load_flickr30k(tmp_path, split="all")
    assert [s.uid for s in everything] == [str(2000 + k) for k in range(len(FLICKR_CSV_SPLITS))]
    assert everything[1].captions[4] == 'Image 1, caption "4".' and everything[1].meta["image_id"] == 1
    assert abs(everything[1].image.getpixel((0, 0))[1] - 30) <= 3  # the file of image 1 (JPEG: lossy)
    assert [s.uid for s in load_flickr30k(tmp_path, split="test")] == ["2001", "2004"]
    assert [s.uid for s in load_flickr30k(tmp_path, split="validation")] == ["2002"]
    picked = [s.uid for s in load_samples("flickr30k", split="all", n=3, seed=42, data_dir=tmp_path)]
    assert picked == [str(2000 + i) for i in np.sort(np.random.default_rng(42).choice(5, size=3, replace=False))]
    # Karpathy's JSON, when present, is read before the CSV
    (tmp_path / "dataset_flickr30k.json").write_text(json.dumps({"images": [
        {"filename": "2003.jpg", "split": "test", "sentences": [{"raw": "from the json"}]}]}))
    assert [s.captions for s in load_flickr30k(tmp_path, split="all")] == [("from the json",)]


def test_flickr30k_hf_csv_errors(tmp_path):
    write_flickr30k_csv(tmp_path)
    csv_path = tmp_path / "flickr_annotations_30k.csv"
    lines = csv_path.read_text().splitlines()
    csv_path.write_text("\n".join(lines[:2]) + "\n")  # only the first (train) image
    with pytest.raises(ValueError, match="no image has split 'test'"):
        load_flickr30k(tmp_path, split="test")
    csv_path.write_text('raw,split,filename\n"[]",test,1.jpg\n')
    with pytest.raises(ValueError, match=r"no column\(s\) \['img_id'\]"):
        load_flickr30k(tmp_path, split="all")
    csv_path.write_text("raw,sentids,split,filename,img_id\nnot json,[],test,2000.jpg,0\n")
    with pytest.raises(ValueError, match="line 2: column raw is not a JSON list"):
        load_flickr30k(tmp_path, split="all")
    csv_path.write_text('raw,sentids,split,filename,img_id\n"[]",[],test,2000.jpg,0\n')
    with pytest.raises(ValueError, match="line 2: column raw holds no caption list"):
        load_flickr30k(tmp_path, split="all")
    csv_path.unlink()
    write_image(tmp_path / "x.jpg", (0, 0, 0))
    with pytest.raises(ValueError, match="flickr_annotations_30k.csv .*nlphuji/flickr30k"):
        load_flickr30k(tmp_path, split="all")
