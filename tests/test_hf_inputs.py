"""Every input of the Hugging Face integrations checked once, at the boundary, with an error naming the argument.

Each case used to crash deep inside (an embedding error, an IndexError, a
reshape error), be swallowed (a typo'd keyword), or be accepted and give a
silently different selection (blank expressions, the LLM's tokenizer, a
5-D ``pixel_values`` read as more images). After every refused call the
model still gives its normal output: an error leaves nothing behind.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

pytest.importorskip("transformers")

import _lvlm_models as lm  # noqa: E402
import tokenizers  # noqa: E402
import transformers  # noqa: E402
from _lvlm_models import tl  # noqa: E402

from litelvlm_kernels.integrations.hf import LiteLVLMPruner  # noqa: E402
from litelvlm_kernels.integrations.lvlm import enable_litelvlm  # noqa: E402

M = tl.M
EXPRS = lm.EXPRS  # row 0: one image, row 1: two images


@pytest.fixture(scope="module")
def pruner():
    return LiteLVLMPruner(lm.clip(), tokenizer=lm.tokenizer())


@pytest.fixture(scope="module")
def model():
    return lm.lvlm("llava")


def word_tokenizer(n_words: int, eos: str = "</s>"):
    """A fast word-level tokenizer of ``n_words`` entries: stands in for an LLM's tokenizer."""
    vocab = {w: i for i, w in enumerate(["<unk>", "<s>", eos] + [f"w{i}" for i in range(n_words - 3)])}
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>",
                                                eos_token=eos, pad_token="<unk>")


def px(n=1, seed=3):
    return lm.pixels(n, 3, tl.IMAGE, tl.IMAGE, seed=seed)


# --------------------------------------------------------------------------- the pruner


@pytest.mark.parametrize("call,exc,match", [
    (lambda p: p.prune(px(), texts=["a cat"], num_retian=8), TypeError, "num_retian"),
    (lambda p: p.prune(px(2), texts=[["the cat"], "a dog"]), TypeError, "texts: mixes"),
    (lambda p: p.prune(px(), texts=[1, 2]), TypeError, r"texts\[0\]"),
    (lambda p: p.prune(px(), texts=["a cat", "  "]), ValueError, r"texts\[1\]"),
    (lambda p: p.prune(px(), texts=[""]), ValueError, r"texts\[0\]"),
    (lambda p: p.prune(px(2), texts=[["a cat"], [" "]]), ValueError, r"texts\[1\]\[0\]"),
    (lambda p: p.prune(px(0), texts=["a cat"]), ValueError, "pixel_values: no images"),
    (lambda p: p.prune(px().numpy(), texts=["a cat"]), TypeError, "pixel_values"),
    (lambda p: p.prune(px()[0], texts=["a cat"]), ValueError, "pixel_values"),
    (lambda p: p.prune(px().long(), texts=["a cat"]), TypeError, "pixel_values"),
    (lambda p: p.prune(px(), input_ids=torch.ones(2, 4)), TypeError, "input_ids"),
    (lambda p: p.prune(px(), input_ids=torch.ones(4, dtype=torch.long)), ValueError, "input_ids"),
])
def test_pruner_inputs_named(pruner, call, exc, match):
    with torch.no_grad(), pytest.raises(exc, match=match):
        call(pruner)
    with torch.no_grad():  # nothing left behind
        assert pruner.prune(px(), texts=["a cat"], num_retain=8).indices.shape == (1, 8)


def test_wrong_tokenizer_refused_at_construction():
    clip = lm.clip()
    with pytest.raises(ValueError, match="tokenizer: it makes ids up to 299, beyond the CLIP text tower's "
                                         f"vocab_size {clip.config.text_config.vocab_size}"):
        LiteLVLMPruner(clip, tokenizer=word_tokenizer(300))  # an LLM-sized vocabulary
    with pytest.raises(ValueError, match=r"tokenizer: \[EOS\] is id 2"):
        LiteLVLMPruner(clip, tokenizer=word_tokenizer(10))   # fits, but pools at another [EOS]


def gapped_tokenizer(eos_id: int = 40):
    """A fast word-level tokenizer of 10 tokens whose ids skip 9..39 (legal: a vocabulary file may), [EOS] the
    highest id: len(tokenizer) - 1 = 9 is not its highest id."""
    vocab = {"<unk>": 0, "<s>": 1, **{w: i + 2 for i, w in enumerate(tl.WORDS[:7])}, "</s>": eos_id}
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    tok.post_processor = tokenizers.processors.TemplateProcessing(single="<s> $A </s>",
                                                                  special_tokens=[("<s>", 1), ("</s>", eos_id)])
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>",
                                                eos_token="</s>", pad_token="</s>")


def legacy_clip(vocab_size: int):
    """A CLIPModel whose text tower keeps the legacy eos_token_id = 2: it pools at the highest id of each row."""
    return transformers.CLIPModel(transformers.CLIPConfig(
        text_config=dict(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=16, eos_token_id=2),
        vision_config=dict(image_size=tl.IMAGE, patch_size=tl.PATCH, hidden_size=32, intermediate_size=64,
                           num_hidden_layers=2, num_attention_heads=2),
        projection_dim=16)).eval()


def test_a_tokenizer_whose_ids_have_gaps_is_accepted():
    """[EOS] is the highest id although len(tokenizer) - 1 is smaller: valid for a legacy CLIP tower, which pools
    there (the check used to compare with len(tokenizer) - 1 and refused it)."""
    from litelvlm_kernels.selection.text import highest_id

    tok = gapped_tokenizer()
    assert len(tok) == 10 and highest_id(tok) == 40 == tok.eos_token_id
    clip = legacy_clip(41)
    pruner = LiteLVLMPruner(clip, tokenizer=tok)
    with torch.no_grad():
        cond = pruner.prepare_text(texts=["the cat", "a photo of the dog"])
        ids = tok(["the cat", "a photo of the dog"], padding=True, return_tensors="pt")
        want = clip.get_text_features(input_ids=ids.input_ids, attention_mask=ids.attention_mask)
        want = getattr(want, "pooler_output", want)  # transformers 5 returns an output object
    torch.testing.assert_close(cond.text_embeds[0], want)
    with pytest.raises(ValueError, match=r"tokenizer: \[EOS\] is id 40, but .* pools at the highest id \(41\)"):
        LiteLVLMPruner(legacy_clip(42), tokenizer=_with_extra(gapped_tokenizer(), 41))  # 41 is higher than [EOS]


def _with_extra(tok, new_id: int):
    """``tok`` plus one token at ``new_id`` (an added token above [EOS])."""
    vocab = dict(tok.get_vocab(), extra=new_id)
    inner = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="<unk>"))
    inner.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    return transformers.PreTrainedTokenizerFast(tokenizer_object=inner, unk_token="<unk>", bos_token="<s>",
                                                eos_token="</s>", pad_token="</s>")


def test_vocabulary_check_reads_the_highest_id():
    """10 tokens fit a 41-id tower by count, but id 40 does not fit a 40-id one: refused by name (CLIP and SigLIP),
    instead of an embedding index error at the first text."""
    with pytest.raises(ValueError, match="tokenizer: it makes ids up to 40, beyond the CLIP text tower's "
                                         "vocab_size 40"):
        LiteLVLMPruner(legacy_clip(40), tokenizer=gapped_tokenizer())
    from litelvlm_kernels.selection.siglip import check_siglip_tokenizer

    cfg = transformers.SiglipTextConfig(vocab_size=40)
    with pytest.raises(ValueError, match="tokenizer: it makes ids up to 40, beyond the SigLIP text tower's "
                                         "vocab_size 40"):
        check_siglip_tokenizer(gapped_tokenizer(), cfg)
    check_siglip_tokenizer(gapped_tokenizer(), transformers.SiglipTextConfig(vocab_size=41))  # fits


def test_tower_widths_checked_at_construction():
    clip = lm.clip()
    other = transformers.CLIPModel(transformers.CLIPConfig(
        text_config=dict(vocab_size=len(lm.tokenizer()), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=16),
        vision_config=dict(image_size=tl.IMAGE, patch_size=tl.PATCH, hidden_size=32, intermediate_size=64,
                           num_hidden_layers=2, num_attention_heads=2),
        projection_dim=16)).eval()
    with pytest.raises(ValueError, match="visual_projection"):
        LiteLVLMPruner(clip, other, lm.tokenizer(), visual_projection=other.visual_projection)
    with pytest.raises(ValueError, match="text_model"):
        LiteLVLMPruner(clip, other, lm.tokenizer(), visual_projection=clip.visual_projection)
    model = lm.lvlm("llava")
    with pytest.raises(ValueError, match="visual_projection"):  # at enable time, not at the first generate
        enable_litelvlm(model, other, lm.tokenizer())
    with pytest.raises(ValueError, match="tokenizer"):
        enable_litelvlm(model, clip, word_tokenizer(300))
    assert "forward" not in model.__dict__


def test_long_expressions_truncated_with_one_warning():
    pruner = LiteLVLMPruner(lm.clip(), tokenizer=lm.tokenizer())
    long = " ".join(["the red car"] * 10)  # 30 words, the tiny text tower has 16 positions
    with torch.no_grad(), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        a = pruner.prune(px(), texts=[long], num_retain=8)
        b = pruner.prune(px(), texts=[long + " cat"], num_retain=8)
    msgs = [str(w.message) for w in caught if "truncated" in str(w.message)]
    assert len(msgs) == 1 and "16 positions" in msgs[0]
    assert torch.equal(a.indices, b.indices)  # the words past position 16 are cut from both


# --------------------------------------------------------------------------- the patched LVLM


def _bad_calls(batch):
    ids, mask, pix = batch["input_ids"], batch["attention_mask"], batch["pixel_values"]
    return [
        (dict(batch, input_ids=ids.float()), TypeError, "input_ids: expected integer"),
        (dict(batch, input_ids=ids[0], attention_mask=mask[0]), ValueError, r"input_ids: expected \[batch"),
        (dict(batch, pixel_values=pix[0]), ValueError, "pixel_values: expected a 4-D"),
        (dict(batch, pixel_values=pix[None]), ValueError, "pixel_values: expected a 4-D"),
        (dict(batch, pixel_values=pix.numpy()), TypeError, "pixel_values"),
        (dict(batch, pixel_values=pix[:, :1]), ValueError, "pixel_values: expected 3 channels"),
        (dict(batch, attention_mask=mask[:, 1:]), ValueError, "attention_mask"),
        (dict(batch, attention_mask=np.ones(ids.shape)), ValueError, "attention_mask"),
    ]


@pytest.mark.parametrize("case", range(8))
def test_lvlm_tensors_named(model, batch, case):
    kwargs, exc, match = _bad_calls(batch)[case]
    with torch.no_grad(), enable_litelvlm(model, lm.clip(), lm.tokenizer(), num_retain=8):
        want = model(**batch, referring_expressions=EXPRS).logits
        with pytest.raises(exc, match=match):
            model(**kwargs, referring_expressions=EXPRS)
        with pytest.raises(exc, match=match):
            model.generate(**kwargs, referring_expressions=EXPRS, max_new_tokens=2)
        assert torch.equal(model(**batch, referring_expressions=EXPRS).logits, want)


@pytest.mark.parametrize("exprs,exc,match", [
    ([["the cat"], ["a red car", " "]], ValueError, r"referring_expressions\[1\]\[1\]"),
    ([[""], ["a red car"]], ValueError, r"referring_expressions\[0\]\[0\]"),
    ([["the cat"], [3]], TypeError, r"referring_expressions\[1\]\[0\]"),
    ([["the cat"], 3], TypeError, r"referring_expressions\[1\]"),
    ({"a": 1}, TypeError, "referring_expressions"),
])
def test_lvlm_expressions_named(model, batch, exprs, exc, match):
    with torch.no_grad(), enable_litelvlm(model, lm.clip(), lm.tokenizer(), num_retain=8):
        with pytest.raises(exc, match=match):
            model(**batch, referring_expressions=exprs)


def test_siglip_tower_with_clip_parts_is_refused_by_name():
    """A SigLIP tower has CLIP's shape (embeddings, encoder, post_layernorm) but no [CLS]: it is read the SigLIP way
    (tests/test_siglip.py), and CLIP parts handed to it are refused, named, never misread."""
    siglip = transformers.SiglipVisionConfig(image_size=tl.IMAGE, patch_size=tl.PATCH, hidden_size=64,
                                             intermediate_size=128, num_hidden_layers=2, num_attention_heads=4)
    tower = transformers.SiglipVisionModel(siglip).eval()
    with pytest.raises(ValueError, match="visual_projection: SigLIP towers have none"):
        LiteLVLMPruner(tower, lm.clip(), lm.tokenizer(), visual_projection=lm.clip().visual_projection)
    with pytest.raises(TypeError, match="text_model: CLIPModel has no SigLIP text head"):
        LiteLVLMPruner(tower, lm.clip(), lm.tokenizer())
    cfg = transformers.LlavaConfig(vision_config=dict(siglip.to_dict(), vision_use_head=False),
                                   text_config=tl.text_config(), image_token_index=tl.IMAGE_TOKEN,
                                   vision_feature_select_strategy="full")
    llava = transformers.LlavaForConditionalGeneration(cfg).eval()
    with pytest.raises(TypeError, match="without its attention-pooling head"):
        enable_litelvlm(llava, lm.clip(), lm.tokenizer())
    assert "forward" not in llava.__dict__
