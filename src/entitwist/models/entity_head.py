"""Entity selection head: one score per entity, added to the decoder's logits.

**An extension beyond the paper**, off in every paper configuration
(``decoder.entity_head_layers = 0``) and on in the tiny CPU models. The paper's decoder
decides pixel by pixel; the entities enter only through SEG inside the encoder. A network
trained from scratch on a few thousand sentences then finds the referred *class* well but
keeps every object of it ("the biggest car" -> all cars): choosing one object by a
comparison is a decision about whole objects, not pixels. This head makes that decision at
the level of the entity priors:

1. MAP (eq. 1) of the decoder's last feature map (1/4 resolution) over each entity;
2. plus an embedding of the entity's geometry from its area map: centroid (y, x), square
   root of its area, log-area, spread along y and x (all in fractions of the image);
3. ``layers`` transformer decoder layers (``torch.nn.TransformerDecoderLayer``,
   pre-norm): self-attention among the present entities, so they can be compared, then
   cross-attention to the words;
4. a linear score ``s_k``. The foreground logit at cell (h, w) gains
   ``sum_k M[k, h, w] s_k`` (reverse MAP, eq. 4), before the x4 upsampling;
5. after the upsampling, :meth:`EntityHead.refine_logits` pulls each pixel's logit margin
   towards the mean of its entity by a learnt share, so the entity maps' boundaries replace
   the blurred x4 ones where the maps fit (training lowers the share where they do not).

Absent entities (zero area) and images without entities get score 0 and change nothing;
no NaN arises for K = 0, K = 1 or an image whose entities all vanish. Trained with the
pixel loss plus :func:`entitwist.models.loss.entity_selection_loss` (binary
cross-entropy of ``s_k`` against "most of entity k is in the ground truth").
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from entitwist.models.seg import mask_average_pooling, reverse_mask_average_pooling

__all__ = [
    "GEOMETRY_FEATURES",
    "EntityHead",
    "comparison_features",
    "dilate3x3",
    "entity_geometry",
    "entity_logit_map",
    "fragment_groups",
]

#: Size of the geometry descriptor of :func:`entity_geometry`.
GEOMETRY_FEATURES = 6
#: Size of the comparison descriptor of :func:`comparison_features`.
COMPARISON_FEATURES = 11
#: Softness of "left of" / "above" (fraction of the image side) and "larger than" (log area).
POSITION_SOFTNESS, AREA_SOFTNESS = 0.03, 0.15


def entity_geometry(area: Tensor) -> tuple[Tensor, Tensor]:
    """Geometry of each entity from its area map.

    Args:
        area: (B, K, H, W) soft entity masks (:func:`~entitwist.models.seg.entity_area_maps`).

    Returns:
        (B, K, 6) ``[cy, cx, sqrt(a), log(a + 1e-4) / 4, 2 sy, 2 sx]`` with (cy, cx) the
        centroid in [0, 1] of the image side, ``a`` the area as a fraction of the image
        and (sy, sx) the standard deviations of the entity's cells along y and x; zeros for
        absent entities. And ``present`` (B, K) bool, area > 0.
    """
    work = area.float()
    _, _, h, w = work.shape
    mass = work.flatten(2).sum(-1)  # (B, K)
    present = mass > 0
    den = torch.where(present, mass, torch.ones_like(mass))
    ys = (torch.arange(h, device=work.device, dtype=work.dtype) + 0.5) / h  # (H,)
    xs = (torch.arange(w, device=work.device, dtype=work.dtype) + 0.5) / w  # (W,)
    rows, cols = work.sum(-1), work.sum(-2)  # (B, K, H), (B, K, W)
    cy, cx = rows @ ys / den, cols @ xs / den
    vy = (rows @ ys.square() / den - cy.square()).clamp_min(0.0)
    vx = (cols @ xs.square() / den - cx.square()).clamp_min(0.0)
    frac = mass / float(h * w)
    geo = torch.stack(
        [cy, cx, frac.sqrt(), torch.log(frac + 1e-4) / 4.0, 2.0 * vy.sqrt(), 2.0 * vx.sqrt()],
        dim=-1,
    )
    return (geo * present.unsqueeze(-1)).to(area.dtype), present


def dilate3x3(maps: Tensor) -> Tensor:
    """3x3 max filter of non-negative (..., H, W) maps, zero outside the border.

    Equals ``F.max_pool2d(maps, 3, stride=1, padding=1)`` for maps >= 0, as four
    shifted maxima (rows, then columns), which on the CPU take a fifth of the pooling
    kernel's time (it also computes the arg-max indices).
    """
    rows = maps.clone()
    rows[..., 1:, :] = torch.maximum(rows[..., 1:, :], maps[..., :-1, :])
    rows[..., :-1, :] = torch.maximum(rows[..., :-1, :], maps[..., 1:, :])
    out = rows.clone()
    out[..., 1:] = torch.maximum(out[..., 1:], rows[..., :-1])
    out[..., :-1] = torch.maximum(out[..., :-1], rows[..., 1:])
    return out


def fragment_groups(area: Tensor, relevance: Tensor, present: Tensor, rounds: int = 3) -> Tensor:
    """Soft "same object" links between touching relevant entities.

    Entity generators cut one object into several entities (a car into roof, windows and
    shadow: two to four pieces on the demo scenes), which breaks every comparison made
    entity by entity: the right half of the leftmost car has a relevant entity on its left.
    Two entities are linked with strength ``min(r_i, r_j)`` when they touch (their area maps
    overlap after a 3x3 dilation); ``rounds`` max-product squarings of the link matrix join
    chains of up to ``2**rounds`` links.

    Args:
        area: (B, K, H, W) soft entity masks.
        relevance: (B, K) in [0, 1].
        present: (B, K) bool, as :func:`entity_geometry` returns it.

    Returns:
        (B, K, K) in [0, 1], 1 on the diagonal of present entities, 0 for absent ones.
    """
    k = area.shape[1]
    grown = dilate3x3(area)
    touch = torch.einsum("bkn,bjn->bkj", area.flatten(2), grown.flatten(2)) > 0
    touch = touch | touch.transpose(1, 2)
    r = relevance * present
    links = touch * torch.minimum(r[:, :, None], r[:, None, :])
    eye = torch.eye(k, device=area.device, dtype=links.dtype) * present[:, :, None]
    groups = torch.maximum(links, eye)
    for _ in range(rounds):  # strongest path: max over j of g_ij * g_jl
        groups = torch.maximum(groups, (groups[:, :, :, None] * groups[:, None, :, :]).amax(2))
    return groups


def comparison_features(
    geo: Tensor, present: Tensor, relevance: Tensor, groups: Tensor | None = None
) -> Tensor:
    """Soft ranks of each entity's object among the *relevant* other objects.

    ``relevance`` r_j in [0, 1] says how much entity j is of the referred kind (the head
    takes the pixel decoder's mean foreground probability over it, which finds the referred
    class well but cannot compare). ``groups`` g_ij (:func:`fragment_groups`; the identity
    when None) says how much i and j are pieces of one object. With each entity's *object*
    geometry (area ``A_i = sum_j g_ij a_j`` and the area-weighted centroid of its pieces),
    other objects weighted by ``o_ij = r_j (1 - g_ij)`` for j != i, and sigma the logistic
    function:

    - ``left_i = sum_j o_ij sigma((cx_i - cx_j) / tau)``: relevant pieces of other objects
      left of i's object (0 for the leftmost); ``right``, ``above``, ``below`` alike;
    - ``larger_i = sum_j o_ij sigma((log A_j - log A_i) / tau_a)``, ``smaller`` alike;
    - ``n_i = sum_j o_ij``.

    Returns:
        (B, K, 11) ``[r_i, log1p(n), log1p(left), log1p(right), log1p(above),
        log1p(below), log1p(larger), log1p(smaller), object cy, object cx, log(A_i) / 4]``;
        zeros for absent entities, which also count for no one.
    """
    k = present.shape[1]
    eye = torch.eye(k, device=geo.device, dtype=geo.dtype)
    if groups is None:
        groups = eye * present[:, :, None]
    a = (geo[..., 2] ** 2) * present  # area fractions, (B, K)
    cy, cx = geo[..., 0], geo[..., 1]
    obj_a = groups @ a[..., None]  # (B, K, 1)
    den = obj_a.clamp_min(1e-8)
    obj_cy = (groups @ (a * cy)[..., None] / den)[..., 0]
    obj_cx = (groups @ (a * cx)[..., None] / den)[..., 0]
    log_a = torch.log(obj_a[..., 0] + 1e-4)
    r = relevance * present
    others = r[:, None, :] * (1 - groups) * (1 - eye)  # o_ij, (B, K, K)

    def count(value: Tensor, softness: float) -> Tensor:
        # sum_j o_ij sigma((v_i - v_j) / s): relevant other objects with a smaller value
        return (others * torch.sigmoid((value[:, :, None] - value[:, None, :]) / softness)).sum(-1)

    counts = [
        others.sum(-1),
        count(obj_cx, POSITION_SOFTNESS),  # left of i
        count(-obj_cx, POSITION_SOFTNESS),  # right of i
        count(obj_cy, POSITION_SOFTNESS),  # above i
        count(-obj_cy, POSITION_SOFTNESS),  # below i
        count(-log_a, AREA_SOFTNESS),  # larger than i
        count(log_a, AREA_SOFTNESS),  # smaller than i
    ]
    out = torch.stack(
        [r] + [torch.log1p(c) for c in counts] + [obj_cy, obj_cx, log_a / 4.0], dim=-1
    )
    return out * present.unsqueeze(-1)


def entity_logit_map(scores: Tensor, area: Tensor) -> Tensor:
    """Reverse MAP of the scores: ``sum_k M[k, h, w] s_k``, (B, H, W); 0 where no entity is."""
    return reverse_mask_average_pooling(scores.unsqueeze(-1), area)[:, 0]


class EntityHead(nn.Module):
    """Scores each entity against the sentence (module docstring).

    Args:
        in_dim: channels of the feature map the entities are pooled from.
        text_dim: d_t, width of the word embeddings T^ori.
        dim: width of the entity tokens.
        layers: transformer decoder layers (>= 1).
        heads: attention heads (must divide ``dim``).

    ``forward(features (B, C, H, W), area (B, K, H, W), t_ori (B, N, d_t), text_mask (B, N),
    foreground=None) -> scores (B, K)``, 0 for absent entities; ``foreground`` (B, H, W) is
    the pixel decoder's foreground probability at the features' size, whose mean over an
    entity is its relevance (None: every present entity counts as relevant).
    """

    def __init__(self, in_dim: int, text_dim: int, dim: int = 64, layers: int = 2, heads: int = 4):
        super().__init__()
        self.features = nn.Linear(in_dim, dim)
        self.geometry = nn.Sequential(
            nn.Linear(GEOMETRY_FEATURES, dim), nn.GELU(), nn.Linear(dim, dim)
        )
        self.comparison = nn.Sequential(
            nn.Linear(COMPARISON_FEATURES, dim), nn.GELU(), nn.Linear(dim, dim)
        )
        self.words = nn.Linear(text_dim, dim)
        # the sentence gates geometry and ranks multiplicatively ("leftmost" -> rank "left")
        self.sentence = nn.Linear(text_dim, dim)
        self.layers = nn.ModuleList(
            nn.TransformerDecoderLayer(
                dim, heads, 2 * dim, dropout=0.0, batch_first=True, norm_first=True
            )
            for _ in range(layers)
        )
        self.norm = nn.LayerNorm(dim)
        self.score = nn.Linear(dim, 1)
        # alpha = sigmoid(mix) of refine_logits, learnt (starts at 0.5)
        self.mix = nn.Parameter(torch.zeros(()))

    def forward(
        self,
        features: Tensor,
        area: Tensor,
        t_ori: Tensor,
        text_mask: Tensor,
        foreground: Tensor | None = None,
    ) -> Tensor:
        b, k = area.shape[:2]
        if k == 0:
            return features.new_zeros((b, 0))
        area = area.to(features.dtype)
        pooled, _ = mask_average_pooling(features, area)  # (B, K, C)
        geo, present = entity_geometry(area)  # (B, K, 6), (B, K)
        if foreground is None:  # no pixel evidence: every entity counts as relevant
            relevance = present.to(features.dtype)
        else:  # mean foreground probability of the pixel decoder over each entity
            fg = foreground.detach().to(features.dtype)[:, None]  # (B, 1, H, W)
            relevance = mask_average_pooling(fg, area)[0][..., 0]  # (B, K)
        groups = fragment_groups(area.float(), relevance.float(), present).to(area.dtype)
        compare = comparison_features(geo, present, relevance, groups)  # (B, K, 11)
        where = self.geometry(geo) + self.comparison(compare)  # (B, K, dim)
        real = (text_mask != 0).to(t_ori.dtype)[..., None]  # (B, N, 1)
        sentence = (t_ori * real).sum(1) / real.sum(1).clamp_min(1)  # mean of the words
        gate = self.sentence(sentence.to(where.dtype))[:, None]  # (B, 1, dim)
        tokens = self.features(pooled) + where + where * gate
        words = self.words(t_ori.to(tokens.dtype))  # (B, N, dim)
        # An image whose entities all vanished would leave every key of its rows masked
        # (softmax over nothing = NaN): let it attend to entity 0; its scores are zeroed below.
        keys_off = ~present
        keys_off[:, 0] &= present.any(dim=1)
        words_off = text_mask == 0
        for layer in self.layers:
            tokens = layer(
                tokens, words, tgt_key_padding_mask=keys_off, memory_key_padding_mask=words_off
            )
        scores = self.score(self.norm(tokens)).squeeze(-1)  # (B, K)
        return scores * present

    def refine_logits(self, logits: Tensor, labels: Tensor) -> Tensor:
        """Pull each pixel's logit margin towards its entity's mean, at full resolution.

        With ``d = logits[:, 1] - logits[:, 0]`` and ``mean_k(d)`` its mean over entity k's
        pixels, a pixel of entity k gets ``d + alpha (mean_k(d) - d)``, with the learnt
        ``alpha = sigmoid(mix)`` in (0, 1); pixels of no entity keep ``d``. A soft,
        trainable form of "an entity is in or out as a whole": the entity maps' own
        boundaries replace the x4-upsampled ones where the maps fit the objects, and training
        lowers alpha where they do not.

        Args:
            logits: (B, 2, H, W) at the label map's size.
            labels: (B, H, W) entity label map, 0 = none.
        """
        b = logits.shape[0]
        d = logits[:, 1] - logits[:, 0]  # (B, H, W)
        lab = labels.long()
        k = int(lab.max()) + 1 if lab.numel() else 1
        index = (lab + k * torch.arange(b, device=lab.device)[:, None, None]).flatten()
        sums = d.new_zeros(b * k).index_add(0, index, d.flatten())
        counts = torch.bincount(index, minlength=b * k).to(d.dtype).clamp_min(1)
        pooled = (sums / counts)[index].view_as(d)
        alpha = torch.sigmoid(self.mix).to(d.dtype) * (lab > 0).to(d.dtype)
        refined = d + alpha * (pooled - d)
        return torch.stack([logits[:, 0], logits[:, 0] + refined], dim=1)
