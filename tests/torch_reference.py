"""A PyTorch reference of the official architectures, for the conversion parity tests.

Written from the papers' and releases' descriptions, independently of mdistill: module and
parameter names are those of the MAE release (models_mae.MaskedAutoencoderViT), of its
fine-tuning model (models_vit.VisionTransformer) and of timm's VisionTransformer, so their
state dicts have the same keys; the forward passes follow the release (patch conv, fixed
sin-cos position table with a zero cls row, pre-norm blocks with a fused qkv, LayerNorm eps
1e-6, exact GELU, softmax attention scaled by head_dim^-0.5).
"""

import numpy as np
import torch
from torch import nn


def sincos_table(dim: int, grid: int) -> np.ndarray:
    """[1 + grid^2, dim] as the release builds it: a zero cls row, then per patch (row-major)
    the column's 1-D embedding in the first half, the row's in the second, each sin | cos."""
    cols, rows = np.meshgrid(np.arange(grid, dtype=np.float32), np.arange(grid, dtype=np.float32))
    omega = 1.0 / 10000 ** (np.arange(dim // 4, dtype=np.float32) / (dim / 4.0))

    def one_d(pos):
        angles = np.einsum("m,d->md", pos.reshape(-1), omega)
        return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)

    table = np.concatenate([one_d(cols), one_d(rows)], axis=1)
    return np.concatenate([np.zeros((1, dim), np.float32), table]).astype(np.float32)


class Attention(nn.Module):
    def __init__(self, dim, heads, qkv_bias=True):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        attn = ((q @ k.transpose(-2, -1)) * (c // self.heads) ** -0.5).softmax(dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(b, n, c))


class Mlp(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, dim, heads, qkv_bias=True):
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(dim, eps=1e-6), Attention(dim, heads, qkv_bias)
        self.norm2, self.mlp = nn.LayerNorm(dim, eps=1e-6), Mlp(dim)

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class PatchEmbed(nn.Module):
    def __init__(self, patch, chans, dim):
        super().__init__()
        self.proj = nn.Conv2d(chans, dim, patch, stride=patch)

    def forward(self, x):  # NCHW -> [B, L, D], patches row-major
        return self.proj(x).flatten(2).transpose(1, 2)


class MAE(nn.Module):
    """models_mae.MaskedAutoencoderViT, with masking given as ids_keep (the release draws it
    from noise; the encoder then sees the kept patches in that order)."""

    def __init__(self, img, patch, chans, dim, depth, heads, dec_dim, dec_depth, dec_heads):
        super().__init__()
        grid = img // patch
        self.patch = patch
        self.patch_embed = PatchEmbed(patch, chans, dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.from_numpy(sincos_table(dim, grid))[None], requires_grad=False)
        self.blocks = nn.ModuleList([Block(dim, heads) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.decoder_embed = nn.Linear(dim, dec_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dec_dim))
        self.decoder_pos_embed = nn.Parameter(torch.from_numpy(sincos_table(dec_dim, grid))[None],
                                              requires_grad=False)
        self.decoder_blocks = nn.ModuleList([Block(dec_dim, dec_heads) for _ in range(dec_depth)])
        self.decoder_norm = nn.LayerNorm(dec_dim, eps=1e-6)
        self.decoder_pred = nn.Linear(dec_dim, patch * patch * chans)

    def forward_encoder(self, imgs, ids_keep):
        """-> (normed latent [B, 1+K, D], [output of each block])."""
        x = self.patch_embed(imgs) + self.pos_embed[:, 1:]
        x = torch.gather(x, 1, ids_keep[:, :, None].expand(-1, -1, x.shape[-1]))
        cls = (self.cls_token + self.pos_embed[:, :1]).expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1)
        outs = []
        for blk in self.blocks:
            x = blk(x)
            outs.append(x)
        return self.norm(x), outs

    def forward_decoder(self, x, ids_restore):
        x = self.decoder_embed(x)
        masks = self.mask_token.repeat(x.shape[0], ids_restore.shape[1] + 1 - x.shape[1], 1)
        x_ = torch.cat([x[:, 1:], masks], dim=1)
        x_ = torch.gather(x_, 1, ids_restore[:, :, None].expand(-1, -1, x.shape[2]))
        x = torch.cat([x[:, :1], x_], dim=1) + self.decoder_pos_embed
        for blk in self.decoder_blocks:
            x = blk(x)
        return self.decoder_pred(self.decoder_norm(x))[:, 1:]


class ViT(nn.Module):
    """The fine-tuning model: models_vit.VisionTransformer(global_pool) = timm's
    VisionTransformer(global_pool='avg' | 'token'): fc_norm replaces norm when pooling."""

    def __init__(self, img, patch, chans, dim, depth, heads, num_classes, global_pool):
        super().__init__()
        self.global_pool = global_pool
        self.patch_embed = PatchEmbed(patch, chans, dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + (img // patch) ** 2, dim))
        self.blocks = nn.ModuleList([Block(dim, heads) for _ in range(depth)])
        if global_pool:
            self.fc_norm = nn.LayerNorm(dim, eps=1e-6)
        else:
            self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.head = nn.Linear(dim, num_classes) if num_classes else nn.Identity()

    def forward_features(self, imgs):
        x = self.patch_embed(imgs)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        for blk in self.blocks:
            x = blk(x)
        return self.fc_norm(x[:, 1:].mean(dim=1)) if self.global_pool else self.norm(x)[:, 0]

    def forward(self, imgs):
        return self.head(self.forward_features(imgs))


class TimmViT(nn.Module):
    """timm's VisionTransformer as its options arrange it (module names as timm's): a learned
    pos_embed with a cls row (or without, `no_embed_class`), `class_token`, `pre_norm`
    (norm_pre and a bias-free patch embedding, CLIP), `qkv_bias`, and global_pool 'avg' with fc_norm instead of norm
    (`fc_norm`). forward_blocks runs timm's forward_features up to the blocks, on all
    patches or on the kept ones (gathered after the position embedding, as MAE masks)."""

    def __init__(self, img, patch, chans, dim, depth, heads, class_token=True, no_embed_class=False,
                 pre_norm=False, qkv_bias=True, fc_norm=False, num_classes=0):
        super().__init__()
        grid = img // patch
        self.patch_embed = PatchEmbed(patch, chans, dim)
        if pre_norm:  # timm: CLIP's patch embedding has no bias
            self.patch_embed.proj = nn.Conv2d(chans, dim, patch, stride=patch, bias=False)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim)) if class_token else None
        self.no_embed_class = no_embed_class
        rows = grid * grid + (0 if no_embed_class or not class_token else 1)
        self.pos_embed = nn.Parameter(torch.randn(1, rows, dim) * 0.02)
        self.norm_pre = nn.LayerNorm(dim, eps=1e-6) if pre_norm else nn.Identity()
        self.blocks = nn.ModuleList([Block(dim, heads, qkv_bias) for _ in range(depth)])
        self.norm = nn.Identity() if fc_norm else nn.LayerNorm(dim, eps=1e-6)
        self.fc_norm = nn.LayerNorm(dim, eps=1e-6) if fc_norm else nn.Identity()
        self.head = nn.Linear(dim, num_classes) if num_classes else nn.Identity()

    def forward_blocks(self, imgs, ids_keep=None):
        """-> (tokens after the final norm, [output of each block]), cls first where there is one."""
        x = self.patch_embed(imgs)
        cls = None if self.cls_token is None else self.cls_token.expand(x.shape[0], -1, -1)
        if self.no_embed_class or cls is None:  # timm's _pos_embed
            x = x + self.pos_embed
        else:
            cls, x = cls + self.pos_embed[:, :1], x + self.pos_embed[:, 1:]
        if ids_keep is not None:
            x = torch.gather(x, 1, ids_keep[:, :, None].expand(-1, -1, x.shape[-1]))
        if cls is not None:
            x = torch.cat([cls, x], dim=1)
        x = self.norm_pre(x)
        outs = []
        for blk in self.blocks:
            x = blk(x)
            outs.append(x)
        return self.norm(x), outs


def randomize(model: nn.Module, seed: int, pos_embed: bool = False) -> nn.Module:
    """Move every parameter off its default so that each one matters to the outputs; position
    tables too with pos_embed (learned ones), else they are kept."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "pos_embed" in name:
                if pos_embed:
                    p.copy_(0.3 * torch.randn(p.shape, generator=g))
                continue
            noise = torch.randn(p.shape, generator=g)
            if name.endswith("token"):
                p.copy_(0.5 * noise)
            elif p.ndim == 1 and name.endswith("weight"):  # LayerNorm scale
                p.copy_(1.0 + 0.2 * noise)
            elif name.endswith("bias"):
                p.copy_(0.1 * noise)
    return model


# ---- VideoMAE (modeling_pretrain.PretrainVisionTransformer) ---------------------------------
def sinusoid_table(n: int, dim: int) -> torch.Tensor:
    """[1, n, dim]: position / 10000^(2 (j // 2) / dim), sin on even channels, cos on odd."""
    angles = np.array([[pos / np.power(10000, 2 * (j // 2) / dim) for j in range(dim)] for pos in range(n)])
    angles[:, 0::2], angles[:, 1::2] = np.sin(angles[:, 0::2]), np.cos(angles[:, 1::2])
    return torch.tensor(angles, dtype=torch.float32)[None]


class QVAttention(nn.Module):
    """Fused qkv without bias, then q_bias | zeros | v_bias added, as VideoMAE's Attention."""

    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.q_bias, self.v_bias = nn.Parameter(torch.zeros(dim)), nn.Parameter(torch.zeros(dim))
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        b, n, c = x.shape
        bias = torch.cat([self.q_bias, torch.zeros_like(self.v_bias), self.v_bias])
        q, k, v = torch.nn.functional.linear(x, self.qkv.weight, bias).reshape(
            b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        attn = ((q * (c // self.heads) ** -0.5) @ k.transpose(-2, -1)).softmax(dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(b, n, c))


class QVBlock(Block):
    def __init__(self, dim, heads):
        super().__init__(dim, heads)
        self.attn = QVAttention(dim, heads)


class VideoMAEEncoder(nn.Module):
    def __init__(self, frames, img, patch, tubelet, chans, dim, depth, heads):
        super().__init__()
        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv3d(chans, dim, (tubelet, patch, patch), stride=(tubelet, patch, patch))
        self.pos_embed = sinusoid_table((frames // tubelet) * (img // patch) ** 2, dim)  # not a parameter
        self.blocks = nn.ModuleList([QVBlock(dim, heads) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim, eps=1e-6)

    def forward(self, x, mask):
        """x [B, C, T, H, W], mask [B, N] bool (True: hidden) -> (normed visible tokens, block outputs)."""
        x = self.patch_embed.proj(x).flatten(2).transpose(1, 2) + self.pos_embed
        b, _, c = x.shape
        x = x[~mask].reshape(b, -1, c)
        outs = []
        for blk in self.blocks:
            x = blk(x)
            outs.append(x)
        return self.norm(x), outs


class VideoMAEDecoder(nn.Module):
    def __init__(self, dim, depth, heads, out):
        super().__init__()
        self.blocks = nn.ModuleList([QVBlock(dim, heads) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.head = nn.Linear(dim, out)

    def forward(self, x, n_masked):
        for blk in self.blocks:
            x = blk(x)
        return self.head(self.norm(x[:, -n_masked:]))


class VideoMAE(nn.Module):
    """PretrainVisionTransformer: the decoder sees the visible tokens, then one mask token per
    hidden token (each with its position), and predicts the hidden ones in index order."""

    def __init__(self, frames, img, patch, tubelet, chans, dim, depth, heads, dec_dim, dec_depth, dec_heads):
        super().__init__()
        self.encoder = VideoMAEEncoder(frames, img, patch, tubelet, chans, dim, depth, heads)
        self.encoder_to_decoder = nn.Linear(dim, dec_dim, bias=False)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dec_dim))
        self.pos_embed = sinusoid_table((frames // tubelet) * (img // patch) ** 2, dec_dim)
        self.decoder = VideoMAEDecoder(dec_dim, dec_depth, dec_heads, tubelet * patch * patch * chans)

    def forward(self, x, mask):
        latent, blocks = self.encoder(x, mask)
        x_vis = self.encoder_to_decoder(latent)
        b, _, c = x_vis.shape
        pos = self.pos_embed.expand(b, -1, -1)
        full = torch.cat([x_vis + pos[~mask].reshape(b, -1, c),
                          self.mask_token + pos[mask].reshape(b, -1, c)], dim=1)
        return latent, blocks, self.decoder(full, int(mask[0].sum()))


# ---- TinyMIM (OliverRensu/TinyMIM: models_tinymim.TinyMIMViT, models_teacher) ----------------
class RelationAttention(Attention):
    """The release's Attention with return_relation: softmax(q k^T s) and softmax(v v^T s)
    per head, s = head_dim^-0.5 of this block's own head count."""

    def relations(self, x):
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        scale = (c // self.heads) ** -0.5
        return (q @ k.transpose(-2, -1) * scale).softmax(dim=-1), (v @ v.transpose(-2, -1) * scale).softmax(dim=-1)


class RelationBlock(Block):
    def __init__(self, dim, heads):
        super().__init__(dim, heads)
        self.attn = RelationAttention(dim, heads)

    def relations(self, x):  # the release's Block(x, return_relation=True): attention of norm1(x) only
        return self.attn.relations(self.norm1(x))


class TinyMIMViT(nn.Module):
    """The release's student (`last_heads` in its last block) and teacher (MaskedAutoencoderViT
    with `intermediate`): cls + every patch through the blocks until the 1-based block
    `relation_block`, whose relations are returned (the student's: its last, count == depth)."""

    def __init__(self, img, patch, chans, dim, depth, heads, relation_block, last_heads=None):
        super().__init__()
        self.patch_embed = PatchEmbed(patch, chans, dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.from_numpy(sincos_table(dim, img // patch))[None], requires_grad=False)
        self.blocks = nn.ModuleList([RelationBlock(dim, heads) for _ in range(depth - 1)]
                                    + [RelationBlock(dim, last_heads or heads)])
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.relation_block = relation_block

    def forward(self, imgs):
        x = self.patch_embed(imgs) + self.pos_embed[:, 1:]
        cls = (self.cls_token + self.pos_embed[:, :1]).expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1)
        for count, blk in enumerate(self.blocks, start=1):
            if count == self.relation_block:
                return blk.relations(x)
            x = blk(x)
        raise ValueError(f"relation_block {self.relation_block} is past the last block")


def tinymim_kd_loss(student_probs, teacher_probs):
    """The release's forward_kd_loss: KLDivLoss(reduction='none')(pred.log(), target).sum(-1).mean()."""
    return nn.KLDivLoss(reduction="none")(student_probs.log(), teacher_probs).sum(-1).mean()
