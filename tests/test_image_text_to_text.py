"""image-text-to-text: a vision encoder whose features replace the image tokens of a causal
LM's input embeddings, exported as vision encoder, token embedding and decoder step."""

import copy

import pytest
import torch

from exportcheck import export_patches, untrained_model, validate
from exportcheck.tasks import _audio_lm, get_task, tasks_of
from exportcheck.tasks.image_text_to_text import fit_config, image_token

pytestmark = pytest.mark.models

TASK = "image-text-to-text"


@pytest.fixture(scope="module")
def internvl():
    return untrained_model("internvl", task=TASK)


def _exported(encoder):
    """The component's ExportedProgram, traced on its first input set."""
    with export_patches(encoder.module), torch.no_grad():
        return torch.export.export(
            encoder.module,
            (),
            copy.deepcopy(encoder.input_sets[0]),
            dynamic_shapes=encoder.dynamic_shapes,
        )


def test_a_vision_lm_is_built_as_three_graphs_with_the_decoder_on_embeddings(internvl):
    assert [c.name for c in internvl.components] == ["vision_encoder", "embed_tokens", "decoder"]
    encoder, _, step = internvl.components
    assert set(step.input_sets[0]) == {"inputs_embeds", "attention_mask", "cache"}
    assert any(s["attention_mask"][0, 0] == 0 for s in step.input_sets)  # a left-padded set
    counts = [s["pixel_values"].shape[0] for s in encoder.input_sets]
    assert len(set(counts)) == 7  # every set its own number of images
    assert encoder.dynamic_shapes["pixel_values"][0].__name__ == "images"
    # the tiny config's 448 is shrunk to 8 patches a side, and the note says so
    assert internvl.config.vision_config.image_size == [112, 112]
    assert any("image_size [448, 448] -> [112, 112]" in n for n in internvl.notes)


def test_the_default_task_of_a_vision_lm_is_image_text_to_text():
    assert tasks_of("llava") == [TASK]
    assert "vision encoder" in get_task(TASK).status_intro


@pytest.mark.parametrize(
    "model_type",
    [
        "internvl",
        # get_image_features returns a list per image: patch llava_image_rows
        "llava",
        # Gemma 3 pools the patches: mm_tokens_per_image fitted to the tiny encoder
        "gemma3",
        # images of any resolution: patch vision_segment_attention, multimodal rope
        "qwen2_vl",
        # images of any size as tiles, packed in the order image_sizes gives
        "llava_onevision",
        # images of any size padded into one batch (Pixtral encoder)
        "mistral3",
        # get_image_features on the base model only; the aligner's width fitted (family)
        "janus",
        # flattened patches through one linear layer: images and patches dynamic
        "fuyu",
        # a Q-Former reads the image and the prompt; the forward requires the pixels,
        # so the decoder is the language model it hands the merged embeddings to
        "instructblip",
        # NaFlex patch sequences, blocks of 2 x 2 patches unshuffled into one token
        "lfm2_vl",
        # images as VQ-GAN codes mapped into the vocabulary (a map of the tiny vocabulary)
        "chameleon",
        # an image encoder-decoder over flattened patches, padded with their mask
        "pix2struct",
        # an image encoder-decoder over pixels (ViT encoder, BERT decoder)
        "vision-encoder-decoder",
        # its decoder cross-attends to the encoder's pooled output (the projector's)
        "pp_formulanet",
    ],
)
def test_a_vision_lm_validates_and_generates_through_both_runtimes(model_type):
    report = validate(untrained_model(model_type, task=TASK), exporter="onnx")
    assert report.ok, report.table()
    row = report.to_dict()
    assert row["verdicts"] == {"exported_program": True, "onnx": True}
    for runtime in ("exported", "ort"):
        assert report.generation[runtime]["tokens_equal_generate"], report.generation
    consistent = next(s for s in report.stages if s["stage"] == "eager_consistent")
    assert consistent["ok"]


def test_an_unseen_image_count_merged_into_a_prompt_decodes_as_eager(internvl):
    # the exported vision encoder on 3 images (traced on 2), its rows merged at the image
    # tokens, then the exported decoder step on the merged embeddings: as the eager
    # forward on the ids and pixels
    m = internvl
    encoder, _, step = m.components
    programs = {}
    for c in m.components:
        with export_patches(c.module), torch.no_grad():
            programs[c.name] = torch.export.export(
                c.module, (), copy.deepcopy(c.input_sets[0]), dynamic_shapes=c.dynamic_shapes
            )
    generator = torch.Generator().manual_seed(7)
    pixels = torch.randn((3, *encoder.input_sets[0]["pixel_values"].shape[1:]), generator=generator)
    with torch.no_grad():
        rows = programs["vision_encoder"].module()(pixel_values=pixels)
        assert torch.allclose(rows, encoder.module(pixel_values=pixels), atol=1e-5)
    per_image = rows.shape[0] // 3
    token = image_token(m.config)
    text = m.config.get_text_config(decoder=True)
    # row 0: 2 images, row 1: 1 image and text in its place
    ids = torch.cat(
        [
            _audio_lm._text_ids(text, (2, 4), generator, token),
            torch.full((2, per_image), token),
            _audio_lm._text_ids(text, (2, 3), generator, token),
            torch.full((2, per_image), token),
            _audio_lm._text_ids(text, (2, 2), generator, token),
        ],
        1,
    )
    ids[1, 4 + per_image + 3 :][:per_image] = 5
    mask = torch.ones_like(ids)
    with export_patches(m.model), torch.no_grad():
        embeds = torch.cat(
            [
                programs["embed_tokens"].module()(input_ids=ids[:, i : i + 32])
                for i in range(0, ids.shape[1], 32)
            ],
            1,
        )
        merged = _audio_lm.merge(embeds, ids, token, rows, "feature rows")
        first = m.model(inputs_embeds=merged[:, :1], attention_mask=mask[:, :1], use_cache=True)
        cache = _audio_lm._cache_of(first)
        bound = step.dynamic_shapes["inputs_embeds"][1].max
        for start in range(1, ids.shape[1], bound):
            end = min(start + bound, ids.shape[1])
            out = programs["decoder"].module()(
                inputs_embeds=merged[:, start:end], attention_mask=mask[:, :end], cache=cache
            )
            cache = out["cache"]
        expected = m.model(input_ids=ids, attention_mask=mask, pixel_values=pixels).logits
    assert float((out["logits"][:, -1] - expected[:, -1]).abs().max()) < 1e-4


def test_pixel_values_of_the_wrong_rank_or_channels_say_what_is_expected(internvl):
    encoder = internvl.components[0].module
    pixels = internvl.components[0].input_sets[0]["pixel_values"]
    with pytest.raises(ValueError, match=r"pixel_values must be \(images, 3, height, width\)"):
        encoder(pixel_values=pixels[0])
    with pytest.raises(ValueError, match=r"got shape \(2, 1, 112, 112\).*pixel_values\[None\]"):
        encoder(pixel_values=pixels[:, :1])


def test_a_prompt_with_another_number_of_image_tokens_than_features_is_refused(internvl):
    token = image_token(internvl.config)
    ids = torch.tensor([[1, token, token, 2]])
    embeds = torch.zeros((1, 4, 8))
    with pytest.raises(ValueError, match=r"holds 2 placeholder tokens .* returned 3 feature rows"):
        _audio_lm.merge(embeds, ids, token, torch.ones((3, 8)), "feature rows")


def test_a_model_without_image_features_or_image_token_says_why():
    with pytest.raises(ValueError, match=r"names no image placeholder token"):
        untrained_model("pi0", task=TASK)
    with pytest.raises(ValueError, match=r"has no get_image_features"):
        untrained_model("diffusion_gemma", task=TASK)


def test_a_model_type_without_the_task_lists_its_tasks():
    with pytest.raises(ValueError, match=r"'bert' has no image-text-to-text model.*fill-mask"):
        untrained_model("bert", task=TASK)


def test_the_tiny_configs_sizes_are_fitted_as_the_notes_say():
    from exportcheck.models import resolve_config

    config = resolve_config("qwen2_vl", {}, shrink=True)
    notes = fit_config(config)
    text = config.get_text_config(decoder=True)
    sections = text.rope_parameters["mrope_section"]
    assert sum(sections) == text.hidden_size // text.num_attention_heads // 2
    assert any("mrope_section [16, 24, 24]" in n for n in notes)
    gemma = resolve_config("gemma3", {}, shrink=True)
    notes = fit_config(gemma)
    assert gemma.mm_tokens_per_image == 16  # 8 patches a side, pooled to 4
    assert any("mm_tokens_per_image 256 -> 16" in n for n in notes)


@pytest.fixture(scope="module")
def qwen2_vl():
    return untrained_model("qwen2_vl", task=TASK)


def test_a_variable_resolution_encoder_takes_what_the_processor_computes_from_the_grids(
    qwen2_vl,
):
    encoder = qwen2_vl.components[0]
    first = encoder.input_sets[0]
    assert set(first) == {"pixel_values", "image_grid_thw", "vision_position_ids", "cu_seqlens"}
    grids = {tuple(map(tuple, s["image_grid_thw"].tolist())) for s in encoder.input_sets}
    assert len(grids) == 7  # every set its own images and resolutions
    # the decoder step takes the three rows of multimodal rope positions
    step = qwen2_vl.components[2]
    assert step.input_sets[0]["position_ids"].shape[0] == 3


def test_the_exported_grid_encoder_matches_get_image_features_on_unseen_resolutions(qwen2_vl):
    # the export saw two images of 4x4 and 4x6 patches; two sets of other resolutions (and
    # image counts) through the ExportedProgram equal the model's own get_image_features,
    # which derives positions and bounds from the grids itself
    from exportcheck.tasks.image_text_to_text import grid_inputs

    encoder = qwen2_vl.components[0]
    program = _exported(encoder)
    generator = torch.Generator().manual_seed(3)
    width = encoder.input_sets[0]["pixel_values"].shape[1]
    for grids in ([(1, 6, 8)], [(1, 2, 2), (1, 8, 4), (1, 4, 10)]):
        thw = torch.tensor(grids)
        pixels = torch.randn((int(thw.prod(-1).sum()), width), generator=generator)
        feeds = {"pixel_values": pixels, "image_grid_thw": thw, **grid_inputs(qwen2_vl.model, thw)}
        with torch.no_grad():
            got = program.module()(**feeds)
            own = qwen2_vl.model.get_image_features(pixel_values=pixels, image_grid_thw=thw)
        expected = torch.cat(list(own.pooler_output))
        assert got.shape == expected.shape == (int(thw.prod(-1).sum()) // 4, got.shape[1])
        assert float((got - expected).abs().max()) < 1e-4, grids


def _tiny(model_type):
    from transformers import CONFIG_MAPPING

    from exportcheck.models.tiny import tiny_config

    return CONFIG_MAPPING[model_type](), tiny_config(CONFIG_MAPPING[model_type]())


def test_the_tiny_config_rescales_multimodal_rope_sections_to_the_rotary_dims():
    published, tiny = _tiny("cosmos3_edge")  # its config validates the sum
    assert published.text_config.rope_parameters["mrope_section"] == [24, 20, 20]
    assert tiny.text_config.rope_parameters["mrope_section"] == [3, 2, 3]
    assert sum(tiny.text_config.rope_parameters["mrope_section"]) == tiny.text_config.head_dim // 2
    _, tiny = _tiny("hy_v4_vl")  # multi-head latent attention rotates qk_rope_head_dim
    sections = tiny.text_config.rope_parameters["mrope_section"]
    assert sum(sections) == tiny.text_config.qk_rope_head_dim // 2 and min(sections) >= 1


@pytest.mark.parametrize(
    "model_type, sub, key",
    [
        ("granite_docling", "vision_config", "out_hidden_size"),
        ("inkling2", "vision_config", "text_hidden_size"),
        ("muse_spark", "audio_config", "out_hidden_size"),
    ],
)
def test_the_tiny_config_keeps_a_width_tied_to_the_text_model(model_type, sub, key):
    published, tiny = _tiny(model_type)
    assert getattr(getattr(published, sub), key) == published.text_config.hidden_size > 64
    assert getattr(getattr(tiny, sub), key) == tiny.text_config.hidden_size == 64


def test_the_tiny_config_leaves_untied_widths_and_clamps_adapter_layers():
    published, tiny = _tiny("molmo2")
    # published 3584 against a text width of 4096: no tie, so no change
    assert tiny.adapter_config.text_hidden_size == published.adapter_config.text_hidden_size
    assert published.adapter_config.vision_feature_layer == [24, 18]
    assert tiny.adapter_config.vision_feature_layer == [1, 1]  # the 2 vision layers kept
    published, tiny = _tiny("musicgen")  # EnCodec: no projection around the quantizer
    assert published.audio_encoder.codebook_dim == published.audio_encoder.hidden_size
    assert tiny.audio_encoder.codebook_dim == tiny.audio_encoder.hidden_size < 128


@pytest.fixture(scope="module")
def qwen3_vl():
    return untrained_model("qwen3_vl", task=TASK)


def test_deepstack_features_added_densely_equal_the_models_masked_add(qwen3_vl):
    """The decoder graph adds DeepStack features as a dense tensor, zero off the image
    tokens; the language model adds them at a boolean mask: the hidden states agree
    exactly, and differ from those without the features."""
    language = qwen3_vl.model.model.language_model
    hidden = qwen3_vl.config.text_config.hidden_size
    g = torch.Generator().manual_seed(0)
    embeds = torch.randn((2, 7, hidden), generator=g)
    mask = torch.zeros((2, 7), dtype=torch.bool)
    mask[0, 2:5], mask[1, 1:4] = True, True
    features = [torch.randn((6, hidden), generator=g) for _ in range(2)]
    dense = torch.zeros((2, 2, 7, hidden))
    for i, f in enumerate(features):
        dense[i] = dense[i].masked_scatter(mask[..., None].expand(2, 7, hidden), f)
    with torch.no_grad():
        masked = language(
            inputs_embeds=embeds, visual_pos_masks=mask, deepstack_visual_embeds=features
        ).last_hidden_state
        with _audio_lm.added_to_layers(qwen3_vl.model, dense):
            added = language(inputs_embeds=embeds).last_hidden_state
        plain = language(inputs_embeds=embeds).last_hidden_state  # the hooks are gone
    assert torch.equal(added, masked)
    assert (plain - masked).abs().max() > 1e-3


def test_a_deepstack_model_exports_its_features_and_generates_as_generate(qwen3_vl):
    encoder, _, step = qwen3_vl.components
    assert any("DeepStack" in n for n in qwen3_vl.notes)
    # the tower's early-layer features, for the tiny language model's 2 layers
    assert step.input_sets[0]["deepstack_embeds"].shape[0] == 2
    assert step.dynamic_shapes["deepstack_embeds"][2].__name__ == "seq_length"
    with torch.no_grad():
        out = encoder.module(**copy.deepcopy(encoder.input_sets[0]))
    assert set(out) == {"features", "deepstack"}
    assert out["deepstack"].shape[1:] == out["features"].shape
    task = get_task(TASK)
    assert all(c["ok"] for c in task.check_eager(qwen3_vl, 1e-4))
    modules = {c.name: c.module for c in qwen3_vl.components}
    with torch.no_grad():
        reference = task.generate_eager(qwen3_vl)
        loop = task.generate(qwen3_vl, lambda name, feeds: modules[name](**feeds), reference.tokens)
        # without the features, the same loop is not generate's
        zeroed = task.generate(
            qwen3_vl,
            lambda name, feeds: (
                modules[name](**{**feeds, "deepstack_embeds": 0 * feeds["deepstack_embeds"]})
                if name == "decoder"
                else modules[name](**feeds)
            ),
            reference.tokens,
        )
    assert torch.equal(loop.tokens, reference.tokens)
    logits = torch.stack(reference.logits)
    assert torch.allclose(torch.stack(loop.logits), logits, atol=1e-4)
    assert not torch.allclose(torch.stack(zeroed.logits), logits, atol=1e-4)


def test_an_omni_thinker_gets_the_vision_start_token_its_rope_index_reads():
    m = untrained_model("qwen2_5_omni_thinker", task=TASK)
    start, image = m.config.vision_start_token_id, image_token(m.config)
    assert start < m.config.text_config.vocab_size and start != image
    assert any(n.startswith(f"vision_start_token_id {start}:") for n in m.notes)
    task = get_task(TASK)
    ids = task.generation_inputs(m)["input_ids"]
    for row in ids:
        first = int((row == image).nonzero()[0])
        assert row[first - 1] == start and int((row == start).sum()) == 1
    modules = {c.name: c.module for c in m.components}
    with torch.no_grad():
        reference = task.generate_eager(m)
        loop = task.generate(m, lambda name, feeds: modules[name](**feeds), reference.tokens)
    assert torch.equal(loop.tokens, reference.tokens)
    assert torch.allclose(torch.stack(loop.logits), torch.stack(reference.logits), atol=1e-4)


def test_recorded_grid_inputs_equal_the_helpers_and_feed_a_tower_of_another_name():
    from exportcheck.tasks.image_text_to_text import grid_inputs, recorded_grid_inputs

    grid = torch.tensor([[1, 4, 6], [1, 2, 2], [1, 6, 4]])
    qwen = untrained_model("qwen2_vl", task=TASK)
    width = qwen.components[0].input_sets[0]["pixel_values"].shape[1]
    computed, recorded = (
        grid_inputs(qwen.model, grid),
        recorded_grid_inputs(qwen.model, grid, width),
    )
    assert set(recorded) == set(computed)
    assert all(torch.equal(recorded[k], computed[k]) for k in computed)
    # a tower named vision_tower, whose positions carry a temporal axis of its own
    m = untrained_model("minimax_m3_vl", task=TASK)
    assert any(n.startswith("vision tower vision_tower:") for n in m.notes)
    encoder = m.components[0]
    assert encoder.input_sets[0]["vision_position_ids"].shape[1] == 3
    for feeds in encoder.input_sets[:3]:
        with torch.no_grad():
            rows = encoder.module(**copy.deepcopy(feeds))
            split = m.model.get_image_features(
                pixel_values=feeds["pixel_values"], image_grid_thw=feeds["image_grid_thw"]
            ).pooler_output
        assert torch.allclose(rows, torch.cat(split), atol=1e-5)


def test_a_pixel_shuffle_order_is_recorded_and_the_exported_tower_matches_on_unseen_grids():
    # Muse Spark's tower gathers each 2x2 block of patches by an index it computes from
    # the grids in a Python loop; the recorded index is a graph input, of one row per patch
    from exportcheck.tasks.image_text_to_text import recorded_grid_inputs

    m = untrained_model("muse_spark", task=TASK)
    encoder = m.components[0]
    assert "pixel_shuffle_index" in encoder.input_sets[0]
    assert encoder.dynamic_shapes["pixel_shuffle_index"] == encoder.dynamic_shapes["pixel_values"]
    assert any("the order of the pixel shuffle's blocks" in n for n in m.notes)
    program = _exported(encoder)
    generator = torch.Generator().manual_seed(3)
    width = encoder.input_sets[0]["pixel_values"].shape[1]
    thw = torch.tensor([[1, 6, 8], [1, 2, 4]])
    pixels = torch.randn((int(thw.prod(-1).sum()), width), generator=generator)
    extra = recorded_grid_inputs(m.model, thw, width)
    # the first image's first merged token: patches 0, 1 and 8, 9 of its 6x8 grid
    assert extra["pixel_shuffle_index"][:4].tolist() == [0, 1, 8, 9]
    with torch.no_grad():
        got = program.module()(pixel_values=pixels, image_grid_thw=thw, **extra)
        own = m.model.get_image_features(pixel_values=pixels, image_grid_thw=thw)
    expected = torch.cat(list(own.pooler_output))
    assert got.shape == expected.shape == ((48 + 8) // 4, got.shape[1])
    assert float((got - expected).abs().max()) < 1e-5


def test_a_projector_that_merges_per_image_in_a_loop_is_one_gather_on_unseen_grids():
    # PaddleOCR-VL's projector regroups each image's patches into 2x2 blocks in a Python
    # loop over the grids; the graph takes that order (merge_order) as an input, and its
    # tower the patches in the processor's 5-D layout
    from exportcheck.tasks.image_text_to_text import grid_inputs

    m = untrained_model("paddleocr_vl", task=TASK)
    encoder = m.components[0]
    assert encoder.dynamic_shapes["merge_order"] == encoder.dynamic_shapes["pixel_values"]
    assert any("the order in which the projector merges the patches" in n for n in m.notes)
    program = _exported(encoder)
    generator = torch.Generator().manual_seed(3)
    vision = m.config.vision_config
    thw = torch.tensor([[1, 6, 8], [1, 2, 4]])
    patches = int(thw.prod(-1).sum())
    pixels = torch.randn(
        (patches, vision.num_channels, vision.patch_size, vision.patch_size), generator=generator
    )
    extra = grid_inputs(m.model, thw)
    # the first merged token: patches 0, 1 and 8, 9 of the 6x8 grid; the second image
    # starts after the first's 48 patches
    assert extra["merge_order"][:4].tolist() == [0, 1, 8, 9]
    assert extra["merge_order"][48:52].tolist() == [48, 49, 52, 53]
    with torch.no_grad():
        got = program.module()(
            pixel_values=pixels.reshape(patches, -1), image_grid_thw=thw, **extra
        )
        own = m.model.get_image_features(pixel_values=pixels, image_grid_thw=thw)
    expected = torch.cat(list(own.pooler_output))
    assert got.shape == expected.shape == ((48 + 8) // 4, got.shape[1])
    assert float((got - expected).abs().max()) < 1e-5


@pytest.fixture(scope="module")
def llava_next():
    return untrained_model("llava_next", task=TASK)


def test_tiles_of_images_of_any_size_take_their_feature_order_from_image_sizes(llava_next):
    m = llava_next
    encoder = m.components[0]
    assert set(encoder.input_sets[0]) == {"pixel_values", "feature_index"}
    # each set its own tile count, the last at the declared bound
    tiles = [s["pixel_values"].shape[0] for s in encoder.input_sets]
    assert len(set(tiles)) == len(tiles) and tiles[-1] == 20
    # the pinpoints follow the shrunk image_size: the grids of tiles stay 1x2, 2x1, 2x2, ...
    assert m.config.image_grid_pinpoints[0] == [112, 224]
    assert any("image_grid_pinpoints scaled by 112/336" in n for n in m.notes)
    # one image of 2x2 tiles: a base view of 8x8 patches, then 16 rows of 16 patches, each
    # row ended by the newline (nothing to unpad for a square image)
    one = encoder.input_sets[1]
    assert one["pixel_values"].shape[0] == 5
    index = one["feature_index"]
    assert index.shape == (64 + 16 * 17,)
    assert index[:64].tolist() == list(range(64))
    newline = 5 * 64  # the row after the tiles' rows
    assert (index[64:].reshape(16, 17)[:, -1] == newline).all()
    assert (index[64:].reshape(16, 17)[:, :-1] < newline).all()


def test_the_exported_tile_encoder_matches_get_image_features_on_unseen_sizes(llava_next):
    # the ExportedProgram, traced on two images (7 tiles), on images of other sizes and
    # counts equals the model's own get_image_features on the processor's 5-D tiles and
    # image_sizes; a wrong order is far off (the features vary by 0.3 from row to row)
    from exportcheck.tasks.image_text_to_text import processor_tiles, tile_images

    m = llava_next
    encoder = m.components[0]
    program = _exported(encoder)
    generator = torch.Generator().manual_seed(3)
    for images in ([(1.0, 2.0)], [(0.3, 0.9), (2.5, 0.7), (1.9, 2.0)]):
        feeds, sizes = tile_images(m.model, images, generator, 3, 112)
        with torch.no_grad():
            got = program.module()(**feeds)
            own = m.model.get_image_features(
                **processor_tiles(feeds["pixel_values"], sizes, m.model)
            )
        expected = torch.cat(list(own.pooler_output))
        assert got.shape == expected.shape
        assert float((got - expected).abs().max()) < 1e-5, images
        shuffled = got[torch.randperm(got.shape[0], generator=generator)]
        assert float((shuffled - expected).abs().max()) > 1e-2


def test_tiles_whose_packing_is_not_a_reordering_are_refused(llava_next, monkeypatch):
    # a pack_image_features that computes values (an interpolation) cannot be precomputed
    # as an order: the build-time check against get_image_features says so
    from exportcheck.tasks import image_text_to_text as itt

    m = llava_next
    base = m.model.model
    original = type(base).pack_image_features

    def scaled(
        self, image_features, image_sizes, vision_feature_select_strategy, image_newline=None
    ):
        out, lens = original(
            self, image_features, image_sizes, vision_feature_select_strategy, image_newline
        )
        return [f * 1.5 for f in out], lens

    monkeypatch.setattr(type(base), "pack_image_features", scaled)
    generator = torch.Generator().manual_seed(0)
    with pytest.raises(ValueError, match="pack_image_features does more than reorder rows"):
        itt.tile_images(m.model, [(1.0, 2.0)], generator, 3, 112)


def test_a_feature_order_that_differs_from_get_image_features_is_refused(llava_next):
    from exportcheck.tasks import image_text_to_text as itt

    m = llava_next
    generator = torch.Generator().manual_seed(0)
    feeds, sizes = itt.tile_images(m.model, [(1.0, 2.0)], generator, 3, 112)
    itt._check_tiles(m.model, [feeds], [sizes])  # the order pack_image_features gives
    feeds["feature_index"] = feeds["feature_index"].flip(0)
    with pytest.raises(ValueError, match="give other features"):
        itt._check_tiles(m.model, [feeds], [sizes])


def test_tiles_of_the_wrong_rank_say_what_the_encoder_takes(llava_next):
    encoder = llava_next.components[0]
    feeds = dict(encoder.input_sets[0])
    feeds["pixel_values"] = feeds["pixel_values"][None]
    with pytest.raises(ValueError, match=r"\(tiles, 3, height, width\): the tiles of every image"):
        encoder.module(**feeds)


@pytest.fixture(scope="module")
def lighton_ocr():
    return untrained_model("lighton_ocr", task=TASK)


def test_padded_images_take_what_the_encoder_computes_from_their_sizes(lighton_ocr):
    from exportcheck.tasks.image_text_to_text import padded_inputs

    # two images of 2x4 and 4x2 patches, padded to 4x4: the first image's patches are
    # rows 0-1 of its 4x4 block, the second's columns 0-1 of the next block
    sizes = torch.tensor([[28, 56], [56, 28]])
    got = padded_inputs(lighton_ocr.model, sizes, 56, 56)
    patch_index = [0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 20, 21, 24, 25, 28, 29]
    assert got["patch_index"].tolist() == patch_index
    assert got["vision_position_ids"][:8].tolist() == [[r, c] for r in range(2) for c in range(4)]
    assert got["patch_image"].tolist() == [0] * 8 + [1] * 8
    # each merged token takes a 2x2 block of its image, row-major within the block
    assert got["merge_index"].tolist() == [
        [0, 1, 4, 5],
        [2, 3, 6, 7],
        [8, 9, 10, 11],
        [12, 13, 14, 15],
    ]


def test_the_exported_padded_encoder_matches_get_image_features_on_unseen_sizes(lighton_ocr):
    from exportcheck.tasks.image_text_to_text import padded_images

    m = lighton_ocr
    encoder = m.components[0]
    assert encoder.module.layout == "padded"
    program = _exported(encoder)
    generator = torch.Generator().manual_seed(3)
    for images in ([(6, 8)], [(2, 2), (8, 2), (4, 6)]):
        feeds, sizes = padded_images(m.model, images, generator, 3)
        with torch.no_grad():
            got = program.module()(**feeds)
            own = m.model.get_image_features(pixel_values=feeds["pixel_values"], image_sizes=sizes)
        expected = torch.cat(list(own.pooler_output))
        assert got.shape == expected.shape == (sum(h * w for h, w in images) // 4, got.shape[1])
        assert float((got - expected).abs().max()) < 1e-6, images
        # the images attend within themselves: a wrong image assignment is far off
        wrong = dict(feeds, patch_image=torch.zeros_like(feeds["patch_image"]))
        if len(images) > 1:
            with torch.no_grad():
                off = program.module()(**wrong)
            assert float((off - expected).abs().max()) > 1e-4


def test_a_patch_sequence_without_a_temporal_patch_size_has_one_frame_per_patch():
    from exportcheck.models import resolve_config
    from exportcheck.tasks.image_text_to_text import _grid_width

    config = resolve_config("dots3_note", {}, shrink=True)
    assert getattr(config.vision_config, "temporal_patch_size", None) is None
    assert _grid_width(config) == 3 * 14 * 14  # the tower reshapes rows to (3, 14, 14)
    config = resolve_config("qwen2_vl", {}, shrink=True)
    assert _grid_width(config) == 3 * 2 * 14 * 14  # two frames per patch, as configured
    config = resolve_config("muse_spark", {}, shrink=True)
    assert _grid_width(config) == 3 * 2 * 14 * 14  # its config names them patch_temporal


def test_flattened_patches_of_the_wrong_rank_say_what_the_encoder_takes():
    m = untrained_model("fuyu", task=TASK)
    encoder = m.components[0]
    assert encoder.module.layout == "flat"
    patches = {s["pixel_values"].shape[1] for s in encoder.input_sets}
    assert len(patches) == len(encoder.input_sets)  # every set its own patch count
    with pytest.raises(ValueError, match=r"\(images, patches, 2700\): each image's patches"):
        encoder.module(pixel_values=torch.zeros(2, 3, 30, 30))


@pytest.fixture(scope="module")
def inkling():
    return untrained_model("inkling_mm_model", task=TASK)


def test_the_exported_patch_encoder_matches_get_image_features_on_unseen_patch_counts(inkling):
    # Inkling's processor cuts images into patches (patches, T, P, P, C), every image's
    # one after the other, and its tower encodes each patch alone into one image token:
    # the graph traced on 5 patches equals get_image_features on counts it never saw
    m = inkling
    encoder = m.components[0]
    assert encoder.module.layout == "patches"
    counts = [s["pixel_values"].shape[0] for s in encoder.input_sets]
    assert len(set(counts)) == len(counts)  # every set its own patch count
    dim = encoder.dynamic_shapes["pixel_values"][0]
    assert (dim.__name__, dim.max) == ("patches", counts[-1])  # the last set at the bound
    program = _exported(encoder)
    generator = torch.Generator().manual_seed(3)
    shape = encoder.input_sets[0]["pixel_values"].shape[1:]
    assert tuple(shape) == (2, 40, 40, 3)  # temporal_patch_size, patch_size, channels
    for patches in (7, 30):
        pixels = torch.randn((patches, *shape), generator=generator)
        with torch.no_grad():
            got = program.module()(pixel_values=pixels)
            own = m.model.get_image_features(pixel_values=pixels).pooler_output
        assert got.shape == (patches, m.config.text_config.hidden_size)  # a token a patch
        assert float((got - own.reshape(got.shape)).abs().max()) < 1e-6, patches


def test_patches_of_the_wrong_rank_or_shape_say_what_the_encoder_takes(inkling):
    encoder = inkling.components[0]
    wanted = r"\(patches, 2, 40, 40, 3\): the patches of every image one after the other"
    with pytest.raises(ValueError, match=wanted):  # flattened patches
        encoder.module(pixel_values=torch.zeros(4, 2 * 40 * 40 * 3))
    with pytest.raises(ValueError, match=wanted):  # channels first, as pixels
        encoder.module(pixel_values=torch.zeros(4, 2, 3, 40, 40))


def test_an_instructed_q_former_takes_each_images_prompt_and_the_decoder_its_lm():
    m = untrained_model("instructblip", task=TASK)
    encoder, _, step = m.components
    assert encoder.module.layout == "instructed"
    feeds = encoder.input_sets[0]
    assert feeds["qformer_attention_mask"][0, -1] == 0  # the first prompt right-padded
    lengths = {s["qformer_input_ids"].shape[1] for s in encoder.input_sets}
    assert len(lengths) == len(encoder.input_sets)  # every set its own prompt length
    with torch.no_grad():
        got = encoder.module(**feeds)
        other = dict(feeds, qformer_input_ids=feeds["qformer_input_ids"].flip(1))
        assert not torch.allclose(got, encoder.module(**other))  # the prompt is read
        want = m.model.get_image_features(**feeds).pooler_output
    torch.testing.assert_close(got, want.reshape(-1, want.shape[-1]), rtol=0, atol=0)
    # InstructBLIP's forward encodes the pixels on every call: the step is its LM's
    assert step.module.model is m.model.language_model
    with pytest.raises(ValueError, match=r"holds 1 prompts for 2 images"):
        encoder.module(**dict(feeds, qformer_input_ids=feeds["qformer_input_ids"][:1]))


def test_a_forward_that_requires_pixels_without_a_language_model_is_refused():
    class Model(torch.nn.Module):
        def forward(self, pixel_values, input_ids):
            return pixel_values

    with pytest.raises(ValueError, match=r"requires pixel_values and the model has no"):
        _audio_lm.text_lm(Model())


def test_blip2_gets_the_image_token_its_checkpoints_name_and_tied_embedding_widths():
    m = untrained_model("blip-2", task=TASK)
    assert image_token(m.config) == 1000
    text = m.config.text_config
    # OPT's embeddings are as wide as its hidden states, as in the checkpoints
    assert text.word_embed_proj_dim == text.hidden_size == 64


def test_flattened_patches_carry_their_row_and_column_and_pad_with_a_mask():
    from exportcheck.models import resolve_config
    from exportcheck.tasks._image_seq2seq import flattened_patches

    config = resolve_config("pix2struct", {}, shrink=True)
    feeds = flattened_patches(config, [6, 4], torch.Generator().manual_seed(0))
    patches, mask = feeds["flattened_patches"], feeds["attention_mask"]
    assert patches.shape == (2, 6, 2 + config.vision_config.patch_embed_hidden_size)
    # 6 patches as 2 rows of 3, 1-based, in raster order
    assert patches[0, :, 0].tolist() == [1, 1, 1, 2, 2, 2]
    assert patches[0, :, 1].tolist() == [1, 2, 3, 1, 2, 3]
    assert mask.tolist() == [[1] * 6, [1] * 4 + [0] * 2]
    assert patches[1, 4:].abs().sum() == 0  # padding rows are zero


def test_an_image_encoder_decoder_is_three_graphs_and_refuses_pixels_of_another_rank():
    m = untrained_model("vision-encoder-decoder", task=TASK)
    assert [c.name for c in m.components] == ["encoder", "decoder_init", "decoder"]
    encoder = m.components[0]
    assert set(encoder.input_sets[0]) == {"pixel_values"}
    with pytest.raises(ValueError, match=r"pixel_values must have rank 4"):
        encoder.module(pixel_values=torch.zeros(3, 128, 128))


def test_an_image_encoder_decoder_pads_its_decoder_prompts_and_the_mask_is_read():
    # images of one resolution take no mask: the padded sets pad the cached decoder
    # prompt instead (decoder_cache_mask), the new tokens are real
    m = untrained_model("vision-encoder-decoder", task=TASK)
    init, step = m.components[1], m.components[2]
    assert "decoder_cache_mask" not in init.input_sets[0]  # the first step stays unpadded
    padded = [i for i, label in enumerate(step.labels) if "decoder left-padded" in label]
    assert padded == [4, 5]
    for i, feeds in enumerate(step.input_sets):
        mask = feeds["decoder_cache_mask"]
        assert mask.shape == feeds["cache"].self_attention_cache.layers[0].keys.shape[::2][:2]
        assert bool((mask == 0).any()) == (i in padded)
        assert torch.equal(mask, m.prompt_masks[i])
    feeds = step.input_sets[4]
    assert feeds["decoder_cache_mask"][0].tolist()[:6] == [0, 0, 0, 0, 0, 1]
    with torch.no_grad():
        got = step.module(**copy.deepcopy(feeds))["logits"]
        ones = torch.ones_like(feeds["decoder_cache_mask"])
        unmasked = step.module(**copy.deepcopy({**feeds, "decoder_cache_mask": ones}))
    # the pads' zeros change the padded row's logits, and no other row's
    moved = (got - unmasked["logits"]).abs().amax((1, 2))
    assert float(moved[0]) > 1e-3 and float(moved[1:].max()) == 0.0
    # the step equals a full decoder forward over prompt and new tokens with their mask
    assert all(row["ok"] for row in get_task(TASK).check_eager(m, 1e-4))
    assert any("decoder_cache_mask" in note for note in m.notes)


def test_text_encoder_decoders_still_pad_the_encoders_input():
    m = untrained_model("t5", task="text2text-generation")
    step = m.components[2]
    assert "decoder_cache_mask" not in step.input_sets[0]
    assert any(label.endswith("padded") for label in step.labels)


def test_chameleon_images_become_distinct_codes_of_the_tiny_vocabulary():
    from exportcheck.families.chameleon import _code_name

    assert _code_name(305) == "IMGIMGDAFZ"  # each digit as a letter, as the checkpoints
    m = untrained_model("chameleon", task=TASK)
    encoder = m.components[0]
    feeds = encoder.input_sets[0]
    with torch.no_grad():
        codes = m.model.model.get_image_tokens(feeds["pixel_values"])
        rows = encoder.module(**feeds)
    assert codes.unique().numel() > 10  # random images give many codes, not one
    assert int(codes.max()) < m.config.vocab_size
    torch.testing.assert_close(rows, m.model.get_input_embeddings()(codes.flatten()))


def test_an_encoder_whose_states_do_not_depend_on_the_image_is_refused(monkeypatch):
    from exportcheck.tasks import image_text_to_text

    # PP-FormulaNet's vision config initializes with a deviation of 1e-10: untrained, its
    # projector returns zeros for every image, unless the fitted config raises it
    assert any("initializer_range 1e-10 -> 0.02" in n for n in _fitted("pp_formulanet"))
    monkeypatch.setattr(image_text_to_text, "_usable_init_ranges", lambda config: [])
    with pytest.raises(ValueError, match=r"gives two different images the same states"):
        untrained_model("pp_formulanet", task=TASK)


def _fitted(model_type):
    from exportcheck.models import resolve_config

    return fit_config(resolve_config(model_type, {}, shrink=True))


def test_a_tiny_init_range_of_a_vision_tower_is_raised_so_images_matter():
    notes = _fitted("got_ocr2")
    assert any("vision_config.initializer_range 1e-10 -> 0.02" in n for n in notes)
    m = untrained_model("got_ocr2", task=TASK)
    assert m.config.vision_config.initializer_range == 0.02
    assert any("initializer_range 1e-10 -> 0.02" in n for n in m.notes)


def test_a_vision_encoder_that_ignores_the_pixels_is_refused():
    from exportcheck.tasks.image_text_to_text import _check_reads_pixels

    class Constant(torch.nn.Module):
        model = torch.nn.Identity()

        def forward(self, pixel_values):
            return torch.ones(pixel_values.shape[0], 4)

    with pytest.raises(ValueError, match=r"features that move by 0 for other pixel_values"):
        _check_reads_pixels(Constant(), {"pixel_values": torch.zeros(2, 3, 8, 8)})


def test_the_naflex_index_gives_each_token_its_block_of_patch_rows():
    from exportcheck.tasks.image_text_to_text import naflex_grid_index

    # two images padded to 8 patches: a 2 x 4 grid (2 tokens) and a 2 x 2 grid (1 token)
    index = naflex_grid_index(torch.tensor([[2, 4], [2, 2]]), 8, 2)
    # token t's block is [a, 2t + b]: rows a of its two patch rows, columns b
    assert index.tolist() == [[0, 1, 2, 3, 8, 9], [4, 5, 6, 7, 10, 11]]


def test_naflex_patches_of_the_wrong_rank_say_what_the_encoder_takes():
    m = untrained_model("lfm2_vl", task=TASK)
    encoder = m.components[0]
    assert encoder.module.layout == "naflex"
    feeds = dict(encoder.input_sets[0], pixel_values=torch.zeros(2, 3, 16, 16))
    with pytest.raises(ValueError, match=r"padded to the longest, with pixel_attention_mask"):
        encoder.module(**feeds)


def test_a_hybrid_encoder_reads_each_image_at_both_resolutions():
    m = untrained_model("deepseek_vl_hybrid", task=TASK)
    encoder = m.components[0]
    assert encoder.module.layout == "hybrid"
    feeds = encoder.input_sets[0]
    high = feeds["high_res_pixel_values"]
    assert high.shape[-1] > feeds["pixel_values"].shape[-1]
    with torch.no_grad():
        got = encoder.module(**feeds)
        other = encoder.module(**dict(feeds, high_res_pixel_values=torch.randn_like(high)))
    # the high-resolution tower counts (its config's 1e-10 init range is fixed by the family)
    assert (got - other).abs().max() > 1e-3
    with pytest.raises(ValueError, match=r"holds 1 images and pixel_values 2"):
        encoder.module(**dict(feeds, high_res_pixel_values=high[:1]))


@pytest.fixture(scope="module")
def paligemma():
    return untrained_model("paligemma", task=TASK)


def test_a_prefix_lm_step_attends_bidirectionally_over_its_prefix_in_the_graph(paligemma):
    # PaliGemma is a prefix LM: the decoder step takes token_type_ids of its new tokens
    # (0 prefix, 1 suffix); its sets cache a prefix prompt and add suffix tokens, and
    # equal one forward over both given the same types
    m = paligemma
    step = next(c for c in m.components if c.name == "decoder")
    assert list(step.input_sets[0]) == [
        "inputs_embeds",
        "attention_mask",
        "token_type_ids",
        "cache",
    ]
    assert all(
        torch.equal(s["token_type_ids"], torch.ones_like(s["token_type_ids"]))
        for s in step.input_sets
    )
    assert all(c["ok"] for c in get_task(TASK).check_eager(m, 1e-4))
    # a prefill: one masked-out cached position, then 6 prefix and 4 suffix tokens
    generator = torch.Generator().manual_seed(7)
    embeds = torch.randn((2, 11, m.config.text_config.hidden_size), generator=generator)
    mask = torch.ones((2, 11), dtype=torch.int64)
    mask[:, 0] = 0
    types = torch.tensor([[0] * 6 + [1] * 4] * 2)
    program = _exported(step)
    with export_patches(m.model), torch.no_grad():
        exported = program.module()  # while the caches are pytree nodes
        cache = _audio_lm._cache_of(m.model(inputs_embeds=embeds[:, :1], use_cache=True))
        feeds = {"inputs_embeds": embeds[:, 1:], "attention_mask": mask, "token_type_ids": types}
        got = exported(**copy.deepcopy(feeds), cache=copy.deepcopy(cache))["logits"]
        whole = m.model(
            inputs_embeds=embeds,
            attention_mask=mask,
            token_type_ids=torch.cat([types[:, :1], types], 1),
        ).logits[:, 1:]
        causal = exported(
            **dict(copy.deepcopy(feeds), token_type_ids=torch.ones_like(types)),
            cache=copy.deepcopy(cache),
        )["logits"]
    assert (got - whole).abs().max() < 1e-4
    # the prefix's tokens see its later ones, which a causal step does not
    assert (got - causal)[:, :6].abs().max() > 1e-3


def test_a_prefix_lm_prefills_its_prompt_in_one_call_and_generates_as_generate(paligemma):
    m = paligemma
    task = get_task(TASK)
    assert torch.equal(
        task.processor_inputs(m)["token_type_ids"],
        torch.zeros_like(task.processor_inputs(m)["input_ids"]),
    )
    modules = {c.name: c.module for c in m.components}
    calls = []

    def call(name, feeds):
        calls.append((name, feeds.get("token_type_ids")))
        return modules[name](**feeds)

    with torch.no_grad():
        reference = task.generate_eager(m)
        loop = task.generate(m, call, reference.tokens)
        # the same loop with the prompt's types as suffix: a causal prefill, not generate's
        causal = task.generate(
            m,
            lambda name, feeds: modules[name](
                **dict(feeds, token_type_ids=torch.ones_like(feeds["token_type_ids"]))
                if name == "decoder"
                else feeds
            ),
            reference.tokens,
        )
    prefill = next(types for name, types in calls if name == "decoder")
    assert prefill.shape == task.generation_inputs(m)["input_ids"].shape  # the whole prompt
    assert not prefill.any()
    assert torch.equal(loop.tokens, reference.tokens)
    logits = torch.stack(reference.logits)
    assert torch.allclose(torch.stack(loop.logits), logits, atol=1e-4)
    assert not torch.allclose(torch.stack(causal.logits), logits, atol=1e-4)


def _tiny_model(model_type):
    from transformers import AutoConfig, AutoModelForImageTextToText

    from exportcheck import tiny_config

    config = tiny_config(AutoConfig.for_model(model_type))
    torch.manual_seed(0)
    return config, AutoModelForImageTextToText.from_config(config).eval()


def test_emu3_images_become_rows_of_codes_of_the_tiny_vocabulary():
    from exportcheck.families.emu3 import CODES, FIRST_ID, IMAGE_TOKEN, ROW_END, _code_name

    assert _code_name(305) == "<|visual token 000305|>"  # the model reads [-8:-2] back
    config, m = _tiny_model("emu3")
    assert config.image_token_id == IMAGE_TOKEN
    pixels = torch.randn((2, 3, 32, 48), generator=torch.Generator().manual_seed(0))
    sizes = torch.tensor([[32, 48]] * 2)  # 4 x 6 codes of 8 x 8 pixels
    with torch.no_grad():
        tokens = m.model.get_image_tokens(pixels, sizes).view(2, 4, 7)
        rows = m.model.get_image_features(pixels, sizes).pooler_output
    assert (tokens[..., -1] == ROW_END).all()  # each row of codes closed by its row end
    codes = tokens[..., :-1]
    assert ((codes >= FIRST_ID) & (codes < FIRST_ID + CODES)).all()
    assert codes.unique().numel() > 10  # random images give many codes, not one
    assert [tuple(r.shape) for r in rows] == [(28, config.text_config.hidden_size)] * 2
    assert not torch.equal(rows[0], rows[1])  # two images, two sets of rows


def test_granite4_vision_injects_each_image_at_distinct_layers_of_the_tiny_decoder():
    config, m = _tiny_model("granite4_vision")
    targets = [text for _, text in config.deepstack_layer_map] + config.spatial_target_layers
    # every layer but the first: rows added before layer 0 come after the embedding
    # multiplier, which the decoder step on input embeddings does not apply
    assert sorted(targets) == list(range(1, config.text_config.num_hidden_layers))
    generator = torch.Generator().manual_seed(0)
    pixels = torch.randn((2, 1, 3, 3, 256, 256), generator=generator)  # base view + 1 x 2
    sizes = torch.tensor([[256, 512]])
    with torch.no_grad():
        one, other = (
            m.model.get_image_features(p, sizes, vision_feature_select_strategy="default")
            for p in pixels
        )
    assert [layer for layer, _ in one.deepstack_features] == targets
    pairs = zip(one.deepstack_features, other.deepstack_features, strict=True)
    for (_, (rows,)), (_, (others,)) in pairs:
        assert rows.shape == one.deepstack_features[0][1][0].shape
        assert (rows - others).abs().max() > 1e-3  # the rows depend on the image


def test_diffusion_gemma_builds_its_experts():
    config, m = _tiny_model("diffusion_gemma")
    text = config.text_config
    assert (text.num_experts, text.top_k_experts, text.moe_intermediate_size) == (4, 2, 32)
    routers = [x for x in m.modules() if type(x).__name__ == "DiffusionGemmaTextRouter"]
    assert routers and all(r.proj.out_features == 4 for r in routers)
    # the image is read by the prompt's encoder, not by the model the task merges into
    assert hasattr(m.model.encoder, "get_image_features")
    assert not hasattr(m, "get_image_features") and not hasattr(m.model, "get_image_features")


def test_a_tower_fed_token_blocks_with_class_tokens_matches_get_image_features_on_unseen_grids():
    from exportcheck.tasks.image_text_to_text import grid_inputs

    m = untrained_model("inkling2", task=TASK)
    encoder = m.components[0]
    assert encoder.dynamic_shapes["patch_index"] == encoder.dynamic_shapes["pixel_values"]
    program = _exported(encoder)
    vision = m.config.vision_config
    merge, patch, channels = vision.spatial_merge_size, vision.patch_size, vision.num_channels
    # grids in language-model image tokens, as the processor counts them; none of the sets'
    tokens = torch.tensor([[1, 3, 1], [1, 1, 4], [1, 2, 5]])
    thw = tokens * torch.tensor([1, merge, merge])
    generator = torch.Generator().manual_seed(5)
    blocks = torch.rand((17, merge * patch, merge * patch, channels), generator=generator) * 2 - 1
    # the graph's flattened patches: each token's merge x merge patches row by row, each
    # patch's pixels channels last
    patches = blocks.reshape(-1, merge, patch, merge, patch, channels).transpose(2, 3)
    patches = patches.reshape(-1, patch * patch * channels)
    extra = grid_inputs(m.model, thw)
    # a class token opens each image: the second image's first patch (the 13th) comes
    # after two of them
    assert extra["patch_index"][[0, 11, 12]].tolist() == [1, 12, 14]
    with torch.no_grad():
        got = program.module()(pixel_values=patches, image_grid_thw=thw, **extra)
        own = m.model.get_image_features(pixel_values=blocks, image_grid_thw=tokens)
    expected = torch.cat(list(own.pooler_output))
    assert got.shape == expected.shape == (17, got.shape[1])
    assert float((got - expected).abs().max()) < 1e-5


def test_a_resampler_that_pairs_frames_by_offsets_from_the_grids_matches_on_unseen_grids():
    # ERNIE 4.5-VL's resampler pairs each image's rows with themselves by offsets it
    # computes in a Python loop over the grids; for images the graph puts the rows beside
    # themselves, which must equal get_image_features on grids none of the sets use
    from exportcheck.tasks.image_text_to_text import grid_inputs

    m = untrained_model("ernie4_5_vl_moe", task=TASK)
    encoder = m.components[0]
    program = _exported(encoder)
    width = encoder.input_sets[0]["pixel_values"].shape[1]
    thw = torch.tensor([[1, 6, 8], [1, 2, 4], [1, 4, 2]])
    pixels = torch.randn(
        (int(thw.prod(-1).sum()), width), generator=torch.Generator().manual_seed(7)
    )
    with torch.no_grad():
        got = program.module()(pixel_values=pixels, image_grid_thw=thw, **grid_inputs(m.model, thw))
        own = m.model.get_image_features(pixel_values=pixels, image_grid_thw=thw)
    expected = torch.cat(list(own.pooler_output))
    assert got.shape == expected.shape == ((48 + 8 + 8) // 4, got.shape[1])
    assert float((got - expected).abs().max()) < 1e-5
    # the pairing matters: feeding the temporal MLP each row beside zeros changes the rows
    resampler = m.model.model.resampler_model
    rows = resampler.spatial_linear(
        m.model.model.vision_tower(pixels, thw).last_hidden_state.reshape(got.shape[0], -1)
    )
    unpaired = resampler.after_norm(
        resampler.mlp(resampler.temporal_linear(torch.cat([rows, torch.zeros_like(rows)], -1)))
    )
    assert float((unpaired.detach() - expected).abs().max()) > 1e-3


@pytest.mark.parametrize("model_type", ["hunyuan_vl", "hy_v4_vl"])
def test_a_tower_that_resizes_its_table_and_frames_each_image_matches_on_unseen_grids(model_type):
    # HunYuan-VL's tower resizes its position table to each image, merges each image's
    # blocks with a strided convolution and adds newline (and begin/end) rows, all in
    # loops over the grids; the graph takes the taps and both orders precomputed
    from exportcheck.families.hunyuan_vision import feature_order
    from exportcheck.tasks.image_text_to_text import grid_inputs

    m = untrained_model(model_type, task=TASK)
    encoder = m.components[0]
    assert "vision_position_ids" not in encoder.input_sets[0]  # no rotary positions
    program = _exported(encoder)
    width = encoder.input_sets[0]["pixel_values"].shape[1]
    thw = torch.tensor([[1, 6, 8], [1, 2, 4], [1, 4, 2]])
    pixels = torch.randn(
        (int(thw.prod(-1).sum()), width), generator=torch.Generator().manual_seed(9)
    )
    extra = grid_inputs(m.model, thw)
    # bilinear taps: 2 rows x 2 columns of the table per patch, weights summing to 1
    assert extra["interp_indices"].shape == (64, 4)
    assert torch.allclose(extra["interp_weights"].sum(-1), torch.ones(64))
    # 16 merged tokens: 3 rows of 4 then a newline (index 16), framed for HunYuan-VL
    order = feature_order(m.model, thw)
    framed = model_type == "hunyuan_vl"
    assert order[: 6 if framed else 5].tolist() == ([17] if framed else []) + [0, 1, 2, 3, 16]
    with torch.no_grad():
        got = program.module()(pixel_values=pixels, image_grid_thw=thw, **extra)
        own = m.model.get_image_features(pixel_values=pixels, image_grid_thw=thw)
    expected = torch.cat(list(own.pooler_output))
    rows = 3 * 5 + 1 * 3 + 2 * 2 + (6 if framed else 0)
    assert got.shape == expected.shape == (rows, got.shape[1])
    assert float((got - expected).abs().max()) < 1e-5


def test_a_model_that_reads_videos_only_exports_its_frames_under_its_video_token():
    # InstructBLIP-Video has get_video_features only: its processor samples 4 frames of
    # each video and writes its video token num_query_tokens times per frame
    m = untrained_model("instructblipvideo", task=TASK)
    encoder = m.components[0]
    assert image_token(m.config) == m.config.video_token_index
    assert any("videos of 4 frames" in n for n in m.notes)
    shapes = {s["pixel_values"].shape[:2] for s in encoder.input_sets}
    assert {frames for _, frames in shapes} == {4} and len(shapes) > 1
    program = _exported(encoder)
    side = m.config.vision_config.image_size
    generator = torch.Generator().manual_seed(11)
    videos = torch.randn((3, 4, 3, side, side), generator=generator)
    prompt = {
        "qformer_input_ids": torch.randint(1, 50, (3, 6), generator=generator),
        "qformer_attention_mask": torch.ones((3, 6), dtype=torch.long),
    }
    with torch.no_grad():
        got = program.module()(pixel_values=videos, **prompt)
        own = m.model.get_video_features(pixel_values=videos, **prompt).pooler_output
    assert got.shape == (3 * 4 * m.config.num_query_tokens, own.shape[-1])
    assert float((got - own.reshape(got.shape)).abs().max()) < 1e-5
    # a batch of images is refused with what the encoder takes
    with pytest.raises(ValueError, match=r"\(videos, 4, 3, height, width\)"):
        encoder.module(pixel_values=videos[:, 0], **prompt)
