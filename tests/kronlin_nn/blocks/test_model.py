import pytest
from torch import nn

from kronlin_nn.blocks import REGISTRY, LinearBlock, model_blocks

from .test_diagonal import Scale


def test_every_trainable_parameter_gets_one_block_in_registration_order():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.GroupNorm(1, 2), nn.Flatten(), nn.Embedding(5, 2),
                          nn.Linear(3, 4), nn.LayerNorm(4, elementwise_affine=False), Scale(4),
                          nn.PReLU())
    blocks = model_blocks(model)
    assert [(b.name, b.kind) for b in blocks] == [
        ("0", "conv2d"), ("1", "scale_shift"), ("3", "embedding"), ("4", "linear"),
        ("6", "diagonal"), ("7", "diagonal")]
    owned = [p for b in blocks for p in b.params if p is not None]
    assert sorted(map(id, owned)) == sorted(id(p) for p in model.parameters())
    assert blocks[1].param_names == ("1.weight", "1.bias")
    assert [b.kind for b in model_blocks(model, "first_order")][-2:] == ["first_order"] * 2


def test_frozen_parameters_are_left_alone():
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2, bias=False))
    assert [b.module for b in model_blocks(model)] == [model[0], model[2]]
    model[0].requires_grad_(False)  # frozen layers are left alone
    assert [b.module for b in model_blocks(model)] == [model[2]]
    norm = nn.LayerNorm(4)
    norm.bias.requires_grad_(False)  # a diagonal block owns what is trainable
    assert model_blocks(norm)[0].param_names == ("weight",)
    frozen_weight = nn.Linear(3, 4)
    frozen_weight.weight.requires_grad_(False)  # the bias alone: the unsupported policy's
    assert [b.kind for b in model_blocks(frozen_weight)] == ["diagonal"]


def test_subclasses_keep_their_block_unless_they_change_the_forward():
    class Renamed(nn.Linear):
        pass

    class Doubled(nn.Linear):
        def forward(self, x):
            return 2 * super().forward(x)

    assert isinstance(model_blocks(Renamed(2, 2))[0], LinearBlock)
    assert model_blocks(Doubled(2, 2))[0].kind == "diagonal"
    assert REGISTRY[nn.Linear] is LinearBlock


def test_refusals_name_the_problem():
    with pytest.raises(ValueError, match="at least one"):
        model_blocks(nn.Sequential(nn.Tanh()))
    frozen_bias = nn.Linear(3, 4)
    frozen_bias.bias.requires_grad_(False)
    with pytest.raises(ValueError, match=r"model: expected the bias to require grad .* frozen bias"):
        model_blocks(frozen_bias)
    with pytest.raises(ValueError, match=r"model\.1\.weight: no curvature block covers .* PReLU"):
        model_blocks(nn.Sequential(nn.Linear(3, 4), nn.PReLU()), "error")
    with pytest.raises(ValueError, match=r"unsupported: expected one of \('diagonal', 'first_order', "
                                         r"'error'\), got 'adam'"):
        model_blocks(nn.Linear(2, 2), "adam")
    embed, head = nn.Embedding(5, 3), nn.Linear(3, 5)
    head.weight = embed.weight  # tied input and output embeddings
    with pytest.raises(ValueError, match=r"model\.1\.weight: is the same parameter as model\.0\.weight "
                                         r"\(tied weights\)"):
        model_blocks(nn.Sequential(embed, head))
