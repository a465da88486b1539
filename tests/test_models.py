import pytest

from exportcheck import available_configs, get_config


def test_tiny_llm_config_ships():
    assert "arnir0/Tiny-LLM" in available_configs()
    config = get_config("arnir0/Tiny-LLM")
    assert config.model_type == "llama"
    assert (config.hidden_size, config.intermediate_size) == (192, 1024)
    assert (config.num_hidden_layers, config.num_attention_heads) == (1, 2)
    assert (config.num_key_value_heads, config.vocab_size) == (1, 32000)


def test_overrides():
    assert get_config("arnir0/Tiny-LLM", num_hidden_layers=2).num_hidden_layers == 2


def test_unknown_id_suggests_close_ones():
    with pytest.raises(ValueError, match="Did you mean arnir0/Tiny-LLM"):
        get_config("arnir0/Tiny-LM")


def test_not_a_hub_id():
    with pytest.raises(ValueError, match="expected a hub id"):
        get_config("llama")
