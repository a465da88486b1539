"""Every kind of source resolve_config takes: config files, model folders, hub ids (the hub
simulated, never asked), and the one-sentence errors of bad ones."""

import json
import re
from importlib import resources
from pathlib import Path
from unittest import mock

import huggingface_hub
import pytest
from huggingface_hub import errors as hub_errors
from transformers import AutoConfig

from exportcheck.cli import main
from exportcheck.models import resolve_config

# A real-size Llama config, as the hub publishes them.
LLAMA = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 4096,
    "intermediate_size": 14336,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "vocab_size": 128256,
    "max_position_embeddings": 131072,
    "torch_dtype": "bfloat16",
    "transformers_version": "4.43.0",
}
TINY_LLAMA = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "vocab_size": 1024,
}
# Sub-configs as the hub publishes them: nested (llava) or flat, the text config's keys at
# the top (qwen2_vl of transformers 4.x).
LLAVA = {
    "architectures": ["LlavaForConditionalGeneration"],
    "model_type": "llava",
    "image_token_index": 32000,
    "pad_token_id": 32001,
    "text_config": {
        "model_type": "llama",
        "max_position_embeddings": 4096,
        "rms_norm_eps": 1e-05,
        "vocab_size": 32064,
    },
    "vision_config": {
        "model_type": "clip_vision_model",
        "hidden_size": 1024,
        "image_size": 336,
        "intermediate_size": 4096,
        "num_attention_heads": 16,
        "num_hidden_layers": 24,
        "patch_size": 14,
        "projection_dim": 768,
    },
    "vision_feature_layer": -2,
    "vocab_size": 32064,
}
QWEN2_VL = {
    "architectures": ["Qwen2VLForConditionalGeneration"],
    "model_type": "qwen2_vl",
    "hidden_size": 1536,
    "intermediate_size": 8960,
    "num_attention_heads": 12,
    "num_hidden_layers": 28,
    "num_key_value_heads": 2,
    "rope_scaling": {"type": "mrope", "mrope_section": [16, 24, 24]},
    "vision_config": {"depth": 32, "embed_dim": 1280, "hidden_size": 1536, "num_heads": 16},
    "vocab_size": 151936,
}
T5 = {
    "architectures": ["T5ForConditionalGeneration"],
    "model_type": "t5",
    "d_ff": 1024,
    "d_kv": 64,
    "d_model": 512,
    "feed_forward_proj": "gated-gelu",
    "is_encoder_decoder": True,
    "num_decoder_layers": 8,
    "num_heads": 6,
    "num_layers": 8,
    "vocab_size": 32128,
}


def _write(folder: Path, data, name="config.json") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(data if isinstance(data, str) else json.dumps(data), encoding="utf-8")
    return path


def _error(source, **kwargs) -> str:
    with pytest.raises(ValueError) as info:
        resolve_config(source, **kwargs)
    return str(info.value)


def _one_sentence(message: str) -> bool:
    return message.endswith(".") and not re.search(r"[.;:]\s+[A-Z]", message)


# ---- config files and model folders ----------------------------------------------------


def test_config_file_and_model_folder(tmp_path, monkeypatch):
    file = _write(tmp_path / "my-model", LLAMA)
    for source in (str(file), file, str(file.parent), file.parent, f"{file.parent}/"):
        config = resolve_config(source)
        assert type(config).__name__ == "LlamaConfig", source
        assert (config.hidden_size, config.num_hidden_layers, config.vocab_size) == (
            4096,
            32,
            128256,
        )
    assert resolve_config(file.parent)._name_or_path == str(file.parent)
    # relative paths, as a user types them
    monkeypatch.chdir(tmp_path)
    assert resolve_config("./my-model").hidden_size == 4096
    assert resolve_config("my-model").hidden_size == 4096
    assert resolve_config("my-model/config.json").hidden_size == 4096


def test_a_config_file_may_have_another_name(tmp_path):
    assert resolve_config(_write(tmp_path, TINY_LLAMA, "tiny.json")).hidden_size == 64


def test_overrides_reach_a_file_config_and_its_sub_configs(tmp_path):
    _write(tmp_path, LLAVA)
    config = resolve_config(
        tmp_path, {"vision_feature_layer": -1, "text_config.num_hidden_layers": 1}
    )
    assert config.vision_feature_layer == -1
    assert config.text_config.num_hidden_layers == 1


@pytest.mark.parametrize(
    ("data", "model_type", "sub_configs"),
    [
        (T5, "t5", {}),
        (LLAVA, "llava", {"text_config": "LlamaConfig", "vision_config": "CLIPVisionConfig"}),
        (
            QWEN2_VL,
            "qwen2_vl",
            {"text_config": "Qwen2VLTextConfig", "vision_config": "Qwen2VLVisionConfig"},
        ),
    ],
)
def test_folder_of_a_model_with_sub_configs(tmp_path, data, model_type, sub_configs):
    _write(tmp_path, data)
    config = resolve_config(tmp_path)
    assert config.model_type == model_type
    for name, class_name in sub_configs.items():
        assert type(getattr(config, name)).__name__ == class_name, name
    # The same config as transformers' own reader of a model folder.
    expected = AutoConfig.from_pretrained(tmp_path).to_dict()
    assert config.to_dict() == expected
    if model_type == "llava":
        assert config.text_config.vocab_size == 32064
        assert config.vision_config.hidden_size == 1024
    if model_type == "qwen2_vl":  # the flat keys land in the text config
        assert config.text_config.hidden_size == 1536
        assert config.text_config.num_hidden_layers == 28


def test_shrink_a_config_file(tmp_path):
    file = _write(tmp_path, LLAMA)
    assert resolve_config(file).hidden_size == 4096  # not shrunk unless asked
    tiny = resolve_config(file, {"num_key_value_heads": 1}, shrink=True)
    assert (tiny.hidden_size, tiny.num_hidden_layers, tiny.vocab_size) == (64, 2, 1024)
    assert tiny.num_key_value_heads == 1  # overrides after shrinking
    sub = resolve_config(_write(tmp_path / "vlm", LLAVA), shrink=True)
    assert sub.text_config.hidden_size == 64 and sub.vision_config.hidden_size == 64


def test_a_copy_of_a_shipped_config_shrinks_as_the_shipped_one(tmp_path):
    hub_id = "Qwen/Qwen3-30B-A3B"
    shipped = resources.files("exportcheck.models") / "configs" / "Qwen--Qwen3-30B-A3B.json"
    folder = tmp_path / "Qwen3-30B-A3B"
    _write(folder, shipped.read_text(encoding="utf-8"))
    from_folder = resolve_config(folder, shrink=True).to_dict()
    from_id = resolve_config(hub_id, shrink=True).to_dict()
    assert from_folder.pop("_name_or_path") == str(folder)
    from_id.pop("_name_or_path", None)
    assert from_folder == from_id


def test_a_model_type_wins_over_a_folder_of_that_name(tmp_path, monkeypatch):
    _write(tmp_path / "llama", LLAMA)
    monkeypatch.chdir(tmp_path)
    assert resolve_config("llama").hidden_size == 64  # the model type, shrunk
    assert resolve_config("./llama").hidden_size == 4096  # the folder


def test_custom_code_config_resolves_through_its_architectures(tmp_path):
    data = dict(
        TINY_LLAMA,
        model_type="my_llama",
        auto_map={"AutoConfig": "configuration_my.MyConfig"},
    )
    config = resolve_config(_write(tmp_path, data))
    assert type(config).__name__ == "LlamaConfig" and config.hidden_size == 64
    assert not hasattr(config, "auto_map")  # custom code is never run
    # a config without model_type, its class named by architectures
    gpt2 = resolve_config(_write(tmp_path / "gpt2", {"architectures": ["GPT2LMHeadModel"]}))
    assert gpt2.model_type == "gpt2"


# ---- hub ids ---------------------------------------------------------------------------


def _fake_hub(monkeypatch, answer):
    """Make the hub reachable: hf_hub_download answers with ``answer`` (a path or an error)."""
    calls = []

    def hf_hub_download(repo_id, filename, **kwargs):
        calls.append((repo_id, filename, kwargs.get("local_files_only", False)))
        if isinstance(answer, BaseException):
            raise answer
        return str(answer)

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", hf_hub_download)
    return calls


def test_hub_id_downloads_only_its_config(tmp_path, monkeypatch):
    calls = _fake_hub(monkeypatch, _write(tmp_path / "cache", LLAMA))
    config = resolve_config("some-org/some-llama")
    assert calls == [("some-org/some-llama", "config.json", False)]
    assert config.hidden_size == 4096 and config._name_or_path == "some-org/some-llama"
    assert resolve_config("some-org/some-llama", shrink=True).hidden_size == 64


def test_shipped_ids_resolve_without_the_hub(monkeypatch):
    calls = _fake_hub(monkeypatch, ConnectionError("no network"))
    assert resolve_config("arnir0/Tiny-LLM").hidden_size == 192
    assert calls == []


def test_hub_id_offline_says_what_to_do(monkeypatch):
    # HF_HUB_OFFLINE=1: huggingface_hub only looks in its local cache, never the network
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    message = _error("no-such-org/no-such-model")
    assert message.startswith("'no-such-org/no-such-model' is not a folder here")
    for words in (
        "does not ship with exportcheck",
        "the hub cannot be reached",
        "HF_HUB_OFFLINE",
        "download its config.json elsewhere and pass the file's path or its folder",
        "`exportcheck configs` lists the shipped ids",
    ):
        assert words in message, words
    assert _one_sentence(message), message
    assert "a shipped id is close: arnir0/Tiny-LLM" in _error("arnir0/Tiny-LM")
    invalid = _error("some-org/two--dashes")
    assert invalid.startswith("'some-org/two--dashes' is not a valid hub id")


@pytest.mark.parametrize(
    "failure",
    [
        # what hf_hub_download raises when the connection fails and nothing is cached
        hub_errors.LocalEntryNotFoundError("cannot find the requested files"),
        ConnectionError("Network is unreachable"),
        TimeoutError("timed out"),
    ],
)
def test_hub_id_unreachable_says_what_to_do(monkeypatch, failure):
    _fake_hub(monkeypatch, failure)
    message = _error("some-org/some-model")
    assert "the hub cannot be reached" in message
    assert "download its config.json elsewhere and pass the file's path or its folder" in message
    assert "HF_HUB_OFFLINE" not in message
    assert _one_sentence(message), message


def _http_error(cls, status=404):
    return cls("hub error", response=mock.Mock(status_code=status))


@pytest.mark.parametrize(
    ("failure", "words"),
    [
        (_http_error(hub_errors.RepositoryNotFoundError), "the hub has no repository"),
        (_http_error(hub_errors.GatedRepoError, 403), "is a gated repository"),
        (
            _http_error(
                getattr(hub_errors, "RemoteEntryNotFoundError", hub_errors.EntryNotFoundError)
            ),
            "has no config.json",
        ),
        (_http_error(hub_errors.HfHubHTTPError, 503), "the hub answered 503"),
    ],
)
def test_hub_errors_say_what_to_do(monkeypatch, failure, words):
    _fake_hub(monkeypatch, failure)
    message = _error("some-org/some-model")
    assert words in message and "pass" in message, message
    assert _one_sentence(message), message


# ---- bad sources -----------------------------------------------------------------------


def test_a_missing_path_is_not_taken_for_a_model_type(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for source in ("confg.json", "./my-model", "models/my-model/", str(tmp_path / "nope")):
        message = _error(source)
        assert message.startswith(f"no file or folder {source!r} exists"), message
        assert "pass the path of a model's config.json or of the folder that holds it" in message
        assert _one_sentence(message), message
    assert f"(relative to {tmp_path})" in _error("confg.json")
    typo = _error("lama")
    assert "is not a transformers model_type" in typo and "Did you mean llama" in typo
    assert "no file or folder" not in typo


def test_folder_without_config_json(tmp_path):
    _write(tmp_path, {}, "tokenizer.json")
    message = _error(tmp_path)
    assert (
        f"folder {str(tmp_path)!r} has no config.json (its JSON files: tokenizer.json)" in message
    )
    assert "pass a model folder" in message and _one_sentence(message)


def test_config_json_that_cannot_be_read(tmp_path):
    (tmp_path / "config.json").mkdir()
    message = _error(tmp_path)
    assert message.startswith("cannot read config file") and _one_sentence(message), message
    binary = tmp_path / "model.safetensors"
    binary.write_bytes(b"\xff\xfe\x00\x81")
    assert "is not a UTF-8 text file; pass the model's config.json" in _error(binary)


def test_invalid_json_names_the_file_and_line(tmp_path):
    file = _write(tmp_path, '{\n  "model_type": "llama",\n  "hidden_size": 64,\n}\n')
    message = _error(file)
    assert message.startswith(f"config file {str(file)!r} is not valid JSON")
    assert "at line 4, column 1" in message and "fix the file there" in message
    assert _one_sentence(message), message
    assert "holds an array, not an object" in _error(_write(tmp_path / "a", "[1, 2]"))


@pytest.mark.parametrize(
    ("data", "words"),
    [
        ({"hidden_size": 64}, ["needs a 'model_type' key", "add the transformers model type"]),
        (
            {"model_type": "lama", "hidden_size": 64},
            ["has model_type 'lama', which transformers", "did you mean llama", "pass a config"],
        ),
        (
            {
                "model_type": "my_llama",
                "architectures": ["MyLlamaForCausalLM"],
                "auto_map": {"AutoConfig": "configuration_my.MyConfig"},
            },
            [
                "its architectures ['MyLlamaForCausalLM'] name no transformers class",
                "does not run the custom code its auto_map names",
                "pass a config of a transformers model type",
            ],
        ),
    ],
)
def test_configs_transformers_cannot_build(tmp_path, data, words):
    message = _error(_write(tmp_path, data))
    for w in words:
        assert w in message, message
    assert _one_sentence(message), message


# ---- the command line ------------------------------------------------------------------


def test_cli_config_of_a_file_and_a_folder(tmp_path, capsys):
    file = _write(tmp_path / "my-model", LLAMA)
    assert main(["config", str(file)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["model_type"] == "llama" and printed["hidden_size"] == 4096
    assert main(["config", str(file.parent), "--shrink", "--layers", "1"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert (printed["hidden_size"], printed["num_hidden_layers"]) == (64, 1)


def test_cli_bad_source_is_one_line(tmp_path, capsys):
    assert main(["config", str(tmp_path / "nope.json")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("exportcheck config: no file or folder") and err.count("\n") == 1


@pytest.mark.models
def test_cli_validate_a_model_folder(tmp_path, capsys):
    _write(tmp_path / "tiny-llama", TINY_LLAMA)
    assert main(["validate", str(tmp_path / "tiny-llama"), "--exporter", "export"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"{tmp_path / 'tiny-llama'} (text-generation") and "OK" in out


@pytest.mark.models
def test_cli_inputs_of_a_shrunk_file(tmp_path, capsys):
    assert main(["inputs", str(_write(tmp_path, LLAMA)), "--shrink"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("model: LlamaForCausalLM (") and "task: text-generation" in out


def test_a_path_source_is_named_by_its_path_in_the_report(tmp_path):
    from exportcheck.validation import _source_name

    path = _write(tmp_path, TINY_LLAMA, "tiny.json")
    assert _source_name(Path(path)) == str(path)
