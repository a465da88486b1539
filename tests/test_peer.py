"""transformers' own exporters beside exportcheck on the vision encoders: the peer's
export runs on the image sets exportcheck checks, and its failures are recorded."""

import json
import os
import shutil
import subprocess
import sys

import pytest

from exportcheck.peer import ATOL, PEER_RESULTS, peer_vision
from exportcheck.report import write_report

pytestmark = pytest.mark.models

STATUS = os.path.join(os.path.dirname(__file__), "..", "docs", "status", "image-text-to-text")


def test_the_peer_export_of_a_fixed_resolution_encoder_matches_on_new_image_counts():
    row = peer_vision("gemma3")
    assert row["ok"] and row["stage"] is None, row
    # generate hands the prefill the features it computed, so the peer's decomposition of
    # the generation has no vision part (transformers 5.24)
    assert not any("encoder" in c for c in row["generation_components"])
    assert "mm_encoder_outputs" in row["prefill_inputs"]
    assert row["image_encoder"] == "SiglipVisionModel"
    # the six sets of another image count than the prompt's two
    assert [s["input_set"].split()[0] for s in row["sets"]] == [
        "images=1",
        "images=3",
        "images=4",
        "images=5",
        "images=6",
        "images=16",
    ]
    assert all(s["ok"] and s["abs"] <= ATOL for s in row["sets"])


def test_the_peer_export_of_a_grid_encoder_is_checked_on_grids_it_did_not_see():
    row = peer_vision("qwen2_vl")
    assert not row["ok"] and row["stage"] == "run"
    by_set = {s["input_set"]: s for s in row["sets"]}
    # one image, or images of one grid as in the prompt: the graph matches
    assert by_set["images=1 patches=24 grids=6x4"]["ok"]
    # images of different grids: values off with no error, or onnxruntime refuses
    mixed = by_set["images=2 patches=40 grids=4x4,4x6"]
    assert not mixed["ok"] and mixed["abs"] > ATOL and "error" not in mixed
    assert any("ONNXRuntimeError" in s.get("error", "") for s in row["sets"])


@pytest.mark.parametrize(
    ("model_type", "component", "names"),
    [
        # an encoder-decoder whose encoder reads the prompt with the image: its pixels
        ("florence2", "encoder", {"pixel_values"}),
        ("kosmos-2.5", "vision_encoder", {"flattened_patches"}),
        ("gemma4", "vision_encoder", {"pixel_values", "image_position_ids"}),
        # a family's own encoder inputs, converted by its processor_image
        ("emu3", "vision_encoder", {"pixel_values", "image_sizes"}),
        # (set 1 holds no local crops, so no pixel_values_local)
        ("step3p7", "vision_encoder", {"pixel_values", "num_local_patches"}),
        ("granite4_vision", "vision_encoder", {"pixel_values", "image_sizes"}),
        (
            "molmo2",
            "vision_encoder",
            {"pixel_values", "image_token_pooling", "image_grids", "image_num_crops"},
        ),
    ],
)
def test_the_peer_gets_each_image_set_as_the_processor_gives_it(model_type, component, names):
    from exportcheck import untrained_model
    from exportcheck.peer import _processor_images
    from exportcheck.tasks.image_text_to_text import _image_function

    m = untrained_model(model_type, task="image-text-to-text")
    encoder = next(c for c in m.components if c.name == component)
    image = _processor_images(encoder, 1, m.model)
    assert set(image) == names
    # what get_image_features takes, and returns features from
    assert _image_function(m.model)(**image) is not None


def test_the_peer_gets_the_model_with_its_eager_corrections():
    # llama4's forward fails in transformers 5.24 (eager included) without the patch that
    # exportcheck's eager reference has: the peer is given the same model
    row = peer_vision("llama4")
    assert row["eager_fixes"] == ["llama4_image_outputs"]
    assert row["stage"] != "decompose", row
    assert row["sets"] and all("abs" in s for s in row["sets"])


def test_the_status_page_gets_the_side_by_side_section(tmp_path):
    for name in ("results.jsonl", PEER_RESULTS):
        shutil.copyfile(os.path.join(STATUS, name), tmp_path / name)
    write_report(str(tmp_path / "results.jsonl"), str(tmp_path / "page"))
    page = (tmp_path / "page" / "index.rst").read_text()
    assert "Side by side: transformers.exporters" in page
    rows = [json.loads(line) for line in (tmp_path / PEER_RESULTS).read_text().splitlines()]
    built = [r for r in rows if r["stage"] != "exportcheck_build"]
    matched = sum(r["ok"] for r in built)
    assert "exportcheck builds:" in page and f"for **{matched}**;" in page
    fixed = [r["source"] for r in built if r.get("eager_fixes")]
    assert fixed and all(f"{t} (" in page for t in fixed)
    assert (tmp_path / "page" / PEER_RESULTS).exists()


def test_the_peer_command_refuses_an_unknown_model_type(tmp_path):
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "exportcheck",
            "peer",
            "--out",
            str(tmp_path / "p.jsonl"),
            "--only",
            "not_a_model",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=dict(os.environ, HF_HUB_OFFLINE="1"),
    )
    assert out.returncode == 2
    assert "not_a_model: not model types of image-text-to-text" in out.stderr
    assert not (tmp_path / "p.jsonl").exists()
