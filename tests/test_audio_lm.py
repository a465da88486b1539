"""Audio LMs: an audio encoder whose frames replace the audio tokens of a causal LM's
input embeddings, exported as audio encoder, token embedding and decoder step."""

import pytest
import torch

from exportcheck import untrained_model, validate
from exportcheck.families import KNOWN_FAILURES
from exportcheck.models.sources import resolve_config
from exportcheck.tasks import _audio_lm, get_task


@pytest.fixture(scope="module")
def glmasr():
    return untrained_model("glmasr", task="text2text-generation")


def test_an_audio_lm_is_built_as_three_graphs_with_the_decoder_on_embeddings(glmasr):
    assert [c.name for c in glmasr.components] == ["audio_encoder", "embed_tokens", "decoder"]
    step = glmasr.components[2]
    assert set(step.input_sets[0]) == {"inputs_embeds", "attention_mask", "cache"}
    assert any(s["attention_mask"][0, 0] == 0 for s in step.input_sets)  # a left-padded set
    encoder = glmasr.components[0]
    masks = [s["input_features_mask"] for s in encoder.input_sets]
    assert all(bool((m == 0).any()) for m in masks[:-1])  # clips of different lengths
    assert len({tuple(s["input_features"].shape) for s in encoder.input_sets}) == 7


def test_the_encoder_leaves_out_the_padded_frames(glmasr):
    encoder = glmasr.components[0]
    feeds = encoder.input_sets[0]
    with torch.no_grad():
        both = encoder.module(**feeds)
        alone = [encoder.module(**{k: v[i : i + 1] for k, v in feeds.items()}) for i in range(2)]
    # the rows' frames, each as long as its clip: the short clip gives fewer
    assert both.shape[0] == sum(a.shape[0] for a in alone)
    assert alone[0].shape[0] > alone[1].shape[0]
    assert torch.allclose(both, torch.cat(alone), atol=1e-5)


def test_features_of_the_wrong_rank_say_what_is_expected(glmasr):
    encoder = glmasr.components[0]
    features = encoder.input_sets[0]["input_features"]
    mask = encoder.input_sets[0]["input_features_mask"]
    with pytest.raises(ValueError, match=r"input_features must have rank 3"):
        encoder.module(input_features=features[0], input_features_mask=mask[0])


@pytest.mark.models
@pytest.mark.parametrize(
    ("model_type", "task"),
    [
        ("glmasr", "text2text-generation"),
        ("omniasr", "automatic-speech-recognition"),
        # its extractor returns the samples' mask beside the frames'; its encoder requires
        # an argument it never reads (input_layouts: unread_audio_arguments)
        ("moss_transcribe_diarize", "text2text-generation"),
        # an encoder without a mask: every frame of the padded chunk is audio
        ("voxtral", "automatic-speech-recognition"),
        # no get_audio_features: its family gives the function (input_layouts:
        # audio_features), which must compute the frames the forward scatters
        ("qwen2_audio", "text2text-generation"),
    ],
)
def test_an_audio_lm_validates_and_generates_through_both_runtimes(model_type, task):
    report = validate(model_type, task=task, exporter="onnx")
    assert report.ok, report.table()
    assert report.verdicts == {"exported_program": True, "onnx": True}
    for runtime in ("exported", "ort"):
        assert report.generation[runtime]["tokens_equal_generate"], report.generation
    consistent = next(s for s in report.stages if s["stage"] == "eager_consistent")
    assert consistent["ok"]


def test_a_config_without_an_audio_token_says_so():
    config = resolve_config("voxtral_realtime")
    with pytest.raises(ValueError, match=r"VoxtralRealtimeConfig names no audio placeholder token"):
        _audio_lm.audio_token(config)


def test_tiny_configs_move_placeholder_tokens_inside_the_text_vocabulary():
    glm = resolve_config("glmasr")
    assert glm.audio_token_id < glm.text_config.vocab_size
    granite = resolve_config("granite_speech")
    # two names of one token keep one id
    assert granite.audio_token_id == granite.audio_token_index < granite.text_config.vocab_size
    special = {
        getattr(granite.text_config, n, None)
        for n in ("pad_token_id", "bos_token_id", "eos_token_id")
    }
    assert granite.audio_token_id not in special
    # a config with a vocabulary of its own beside its text config's: both shrunk
    ovis = resolve_config("ovis2")
    assert ovis.image_token_id < min(ovis.vocab_size, ovis.text_config.vocab_size) == 1024


#: the tasks whose mappings hold audio LMs
AUDIO_TASKS = ("text2text-generation", "automatic-speech-recognition")


def test_config_fixes_tie_the_audio_widths_and_set_the_processors_token():
    qwen = resolve_config("qwen3_asr")
    # the projector's output replaces token embeddings: the text model's width
    assert qwen.audio_config.output_dim == qwen.text_config.hidden_size
    nemo = resolve_config("nemo_speechlm")  # validated by its constructor
    diarization = nemo.audio_config.diarization_config
    assert diarization.head_config.audio_hidden_size == diarization.audio_config.hidden_size
    assert nemo.word_timestamp_config.blank_token_id < nemo.word_timestamp_config.vocab_size
    voxtral = resolve_config("voxtral")
    assert _audio_lm.audio_token(voxtral) == 24  # VoxtralProcessor's id


def test_qwen3_asr_frames_fill_the_audio_tokens_embeddings():
    m = untrained_model("qwen3_asr", task="text2text-generation")
    feeds = _audio_lm.generation_inputs(m)
    with torch.no_grad():
        frames = m.components[0].module(**feeds["audio"])
    tokens = int((feeds["input_ids"] == _audio_lm.audio_token(m.config)).sum())
    assert tuple(frames.shape) == (tokens, m.config.text_config.hidden_size)


def test_qwen3_asr_encoder_takes_its_attention_windows_and_exports_only_patched():
    """The encoder lists its attention windows from the mask's values: the graph takes
    them (cu_seqlens, the modeling code's own computation from the mask), and without the
    block-diagonal attention the export fails on the per-window split."""
    import copy

    from exportcheck import export_patches

    m = untrained_model("qwen3_asr", task="automatic-speech-recognition")
    encoder = m.components[0]
    assert type(encoder.module).__name__ == "WindowedAudioEncoder"
    assert any(n.startswith("attention windows as an input") for n in m.notes)
    for feeds in encoder.input_sets:
        mask = feeds["input_features_mask"]
        assert torch.equal(feeds["cu_seqlens"], _audio_lm.audio_windows(m.model, mask))
        # the windows cover the real frames of every clip, padding left out
        with torch.no_grad():
            frames = encoder.module(**copy.deepcopy(feeds))
            expected = m.model.get_audio_features(
                input_features=feeds["input_features"], input_features_mask=mask
            ).pooler_output
        assert torch.allclose(frames, expected.reshape(frames.shape), atol=1e-5)
    first, *others = encoder.input_sets
    unpatched = export_patches(encoder.module, exclude=("vision_segment_attention",))
    with pytest.raises(Exception, match="data-dependent"), unpatched:
        torch.export.export(
            encoder.module,
            (),
            kwargs=copy.deepcopy(first),
            dynamic_shapes=encoder.dynamic_shapes,
        )
    with export_patches(encoder.module), torch.no_grad():
        program = torch.export.export(
            encoder.module, (), kwargs=copy.deepcopy(first), dynamic_shapes=encoder.dynamic_shapes
        )
        for feeds in others:  # other batches, lengths and paddings
            got = program.module()(**copy.deepcopy(feeds))
            assert torch.allclose(got, encoder.module(**copy.deepcopy(feeds)), atol=1e-5)


def test_an_encoder_that_requires_more_than_the_audio_and_its_mask_fails_at_build():
    class Model:
        def get_audio_features(self, input_features, input_features_mask, input_ids, **kw):
            pass

    with pytest.raises(ValueError, match=r"requires \['input_ids'\] besides input_features"):
        _audio_lm.audio_arguments(Model())


def _audio_ledger():
    types = {t: task for task in AUDIO_TASKS for t in get_task(task).model_types()}
    return sorted((t, types[t]) for t in KNOWN_FAILURES if t in types)


@pytest.mark.parametrize(("model_type", "task"), _audio_ledger())
def test_audio_ledger_entries_still_fail_to_build_with_their_error(model_type, task):
    expected, reason = KNOWN_FAILURES[model_type]
    assert len(reason) > 20
    with pytest.raises(Exception, match=expected):
        untrained_model(model_type, task=task)


def test_the_audio_ledger_covers_the_types_that_cannot_be_built():
    ledger = {t for t, _ in _audio_ledger()}
    assert "vibevoice" in ledger
    # built as an audio LM with added audio (its family's codec step)
    assert "kyutai_speech_to_text" not in ledger


class _Extractor:
    """A feature extractor returning (batch, frames, bins) features of 13 frames."""

    sampling_rate = 16000

    def __call__(self, waves, **kwargs):
        mask = torch.ones(len(waves), 13, dtype=torch.int64)
        mask[1, 9:] = 0
        return {
            "input_features": torch.randn(len(waves), 13, 4),
            "attention_mask": mask,
            "padding_mask": torch.ones(len(waves), 16000, dtype=torch.int64),
        }


def test_features_are_padded_on_their_frames_axis_to_the_processors_multiple():
    feeds = _audio_lm.audio_inputs(_Extractor(), "input_features", (0.5, 0.3), 0, multiple=8)
    features, mask = feeds["input_features"], feeds["input_features_mask"]
    assert tuple(features.shape) == (2, 16, 4) and tuple(mask.shape) == (2, 16)
    assert mask[:, 13:].eq(0).all() and features[:, 13:].eq(0).all()
    assert mask[0, :13].eq(1).all() and mask[1, 9:].eq(0).all()
    # (batch, bins, frames): the frames are the last axis as long as the mask
    assert _audio_lm.frames_axis(torch.zeros(2, 4, 13), mask[:, :13]) == 2
    assert _audio_lm.frames_axis(features, mask) == 1


def test_the_frames_mask_is_taken_before_the_samples_mask():
    class Extractor(_Extractor):
        def __call__(self, waves, **kwargs):
            out = super().__call__(waves)
            out["input_features_mask"] = out.pop("attention_mask")
            return out

    feeds = _audio_lm.audio_inputs(Extractor(), "input_features", (0.5, 0.3), 0)
    assert tuple(feeds["input_features_mask"].shape) == (2, 13)


def _model_of(model_type, audio_features):
    config = type("Config", (), {"model_type": model_type})()
    return type("Model", (), {"config": config, "get_audio_features": audio_features})()


def test_family_layouts_name_unread_audio_arguments_and_deterministic_settings():
    def features(self, input_features, input_features_mask, padding_mask, **kwargs):
        pass

    # the family says padding_mask is never read: the graph passes None
    moss = _model_of("moss_transcribe_diarize", features)
    assert _audio_lm.audio_arguments(moss) == ("input_features", "input_features_mask")
    assert _audio_lm.unread_audio_arguments(moss) == ("padding_mask",)
    # another model type requiring it is refused
    with pytest.raises(ValueError, match=r"requires \['padding_mask'\]"):
        _audio_lm.audio_arguments(_model_of("some_audio_lm", features))
    assert _audio_lm.audio_settings(_model_of("vibevoice_asr", features)) == {"sample": False}
    assert _audio_lm.audio_settings(moss) == {}


@pytest.fixture(scope="module")
def voxtral_realtime():
    return untrained_model("voxtral_realtime", task="automatic-speech-recognition")


def _calls(m, replace=None):
    """``call`` of the generation loop on the eager components, the audio encoder's
    frames passed through ``replace`` when given."""
    modules = {c.name: c.module for c in m.components}

    def call(name, feeds):
        with torch.no_grad():
            out = modules[name](**feeds)
        return replace(out) if replace is not None and name == "audio_encoder" else out

    return call


def test_voxtral_realtime_adds_one_audio_frame_to_each_position_without_a_placeholder(
    voxtral_realtime,
):
    m = voxtral_realtime
    assert _audio_lm.added_audio(m.config)
    assert [c.name for c in m.components] == ["audio_encoder", "embed_tokens", "decoder"]
    encoder = m.components[0]
    # the waveform padded to whole tokens: one frame per 8 mel frames, every clip
    for feeds in encoder.input_sets:
        features = feeds["input_features"]
        assert features.shape[-1] % 8 == 0
        with torch.no_grad():
            frames = encoder.module(**feeds)
        assert frames.shape == (features.shape[0] * features.shape[-1] // 8, 64)
    # the exported encoder equals eager on an audio length it was not traced with
    program = torch.export.export(
        encoder.module, (), kwargs=encoder.input_sets[0], dynamic_shapes=encoder.dynamic_shapes
    )
    unseen = encoder.input_sets[3]
    assert unseen["input_features"].shape[-1] != encoder.input_sets[0]["input_features"].shape[-1]
    with torch.no_grad():
        torch.testing.assert_close(program.module()(**unseen), encoder.module(**unseen))


def test_voxtral_realtime_generation_through_the_graphs_equals_streaming_generate(
    voxtral_realtime,
):
    m = voxtral_realtime
    # eager generate streams: the encoder runs four frames a step with its own cache
    reference = _audio_lm.generate_eager(m)
    got = _audio_lm.generate(m, _calls(m), reference.tokens)
    for expected, step in zip(reference.logits, got.logits, strict=True):
        torch.testing.assert_close(step, expected, atol=1e-4, rtol=0)
    # each new token gets the audio frame of its position: silencing the frames after the
    # prompt leaves the prompt's logits and changes those of every generated position
    prompt = _audio_lm.added_generation_inputs(m)["input_ids"].shape[1]

    def silence_after_prompt(flat):
        frames = flat.reshape(2, -1, flat.shape[-1]).clone()
        frames[:, prompt:] = 0
        return frames.reshape(flat.shape)

    silenced = _audio_lm.generate(m, _calls(m, silence_after_prompt), reference.tokens)
    torch.testing.assert_close(silenced.logits[0], got.logits[0])
    assert all(
        float((a - b).abs().max()) > 1e-3
        for a, b in zip(silenced.logits[1:], got.logits[1:], strict=True)
    )


def test_voxtral_realtime_text_cannot_outrun_its_audio():
    embeds = torch.zeros(2, 3, 4)
    frames = torch.ones(2, 5, 4)
    assert torch.equal(_audio_lm.add_frames(embeds, frames, 2), torch.ones(2, 3, 4))
    with pytest.raises(ValueError, match=r"positions 3 to 5 need audio frames.*returned 5"):
        _audio_lm.add_frames(embeds, frames, 3)
