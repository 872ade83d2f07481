import pytest
import torch

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(params=DEVICES)
def device(request):
    return request.param


@pytest.fixture(scope="module")
def batch():
    """2 prompts (left padded), 3 LLaVA-1.5-shaped images: row 0 has one, row 1 two (``_lvlm_models.llava_batch``);
    modules that need another batch define their own fixture of this name."""
    import _lvlm_models as lm

    return lm.llava_batch()
