//! The image transformer of CLIP's vision tower and of DINO (transformers' `CLIPVisionModel`
//! and `ViTModel`: patch convolution, class token, learnt positions, pre-norm blocks), on the
//! crate's CPU kernels (OpenBLAS products, fused attention, parallel activations) rather than
//! candle-transformers' copies, whose candle matmuls made `ace eval` half as fast as PyTorch.
//! The two checkpoints name the same parts differently; [`Naming`] maps them.

use crate::kernels::{self, Activation};
use crate::model::linear::{linear, Linear};
use candle_core::{IndexOp, Module, Result, Tensor};
use candle_nn::{conv2d, conv2d_no_bias, layer_norm, Conv2d, Conv2dConfig, LayerNorm, VarBuilder};

/// Sizes of one image transformer.
#[derive(Debug, Clone)]
pub struct VitConfig {
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    pub image_size: usize,
    pub patch_size: usize,
    pub num_channels: usize,
    pub layer_norm_eps: f64,
    pub activation: Activation,
}

/// Where a checkpoint keeps each part.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Naming {
    /// `vision_model.*` of a `CLIPModel`: `pre_layrnorm`, `post_layernorm` on the class token.
    Clip,
    /// A `ViTModel` (DINO): `layernorm` on every token, biased patch convolution.
    Vit,
}

/// One pre-norm block: `x + attn(ln1(x))`, then `x + mlp(ln2(x))`. The query, key and value
/// projections run as one product (`qkv`).
#[derive(Debug, Clone)]
struct Block {
    norm1: LayerNorm,
    qkv: Linear,
    o: Linear,
    norm2: LayerNorm,
    fc1: Linear,
    fc2: Linear,
}

impl Block {
    fn new(cfg: &VitConfig, naming: Naming, vb: VarBuilder) -> Result<Self> {
        let (h, i, eps) = (cfg.hidden_size, cfg.intermediate_size, cfg.layer_norm_eps);
        Ok(match naming {
            Naming::Clip => Self {
                norm1: layer_norm(h, eps, vb.pp("layer_norm1"))?,
                qkv: Linear::stacked(&[
                    linear(h, h, vb.pp("self_attn.q_proj"))?,
                    linear(h, h, vb.pp("self_attn.k_proj"))?,
                    linear(h, h, vb.pp("self_attn.v_proj"))?,
                ])?,
                o: linear(h, h, vb.pp("self_attn.out_proj"))?,
                norm2: layer_norm(h, eps, vb.pp("layer_norm2"))?,
                fc1: linear(h, i, vb.pp("mlp.fc1"))?,
                fc2: linear(i, h, vb.pp("mlp.fc2"))?,
            },
            Naming::Vit => Self {
                norm1: layer_norm(h, eps, vb.pp("layernorm_before"))?,
                qkv: Linear::stacked(&[
                    linear(h, h, vb.pp("attention.attention.query"))?,
                    linear(h, h, vb.pp("attention.attention.key"))?,
                    linear(h, h, vb.pp("attention.attention.value"))?,
                ])?,
                o: linear(h, h, vb.pp("attention.output.dense"))?,
                norm2: layer_norm(h, eps, vb.pp("layernorm_after"))?,
                fc1: linear(h, i, vb.pp("intermediate.dense"))?,
                fc2: linear(i, h, vb.pp("output.dense"))?,
            },
        })
    }

    fn forward(&self, xs: &Tensor, heads: usize, act: Activation) -> Result<Tensor> {
        let (b, t, h) = xs.dims3()?;
        let normed = self.norm1.forward(xs)?;
        // [b, t, 3 h] -> q, k, v as [b, heads, t, h / heads] strided views; the kernels read
        // them in place.
        let qkv = self
            .qkv
            .forward(&normed)?
            .reshape((b, t, 3, heads, h / heads))?;
        let part = |i: usize| qkv.i((.., .., i))?.transpose(1, 2);
        let (q, k, v) = (part(0)?, part(1)?, part(2)?);
        let attended = kernels::attention_merged(&q, &k, &v, ((h / heads) as f64).powf(-0.5))?;
        let xs = (xs + self.o.forward(&attended)?)?;
        let hidden = kernels::activate(&self.fc1.forward(&self.norm2.forward(&xs)?)?, act)?;
        xs + self.fc2.forward(&hidden)?
    }
}

/// An image transformer; [`ImageEncoder::forward`] gives the normed class token.
#[derive(Debug, Clone)]
pub struct ImageEncoder {
    config: VitConfig,
    patch_embedding: Conv2d,
    class_embedding: Tensor,
    position_embedding: Tensor,
    pre_norm: Option<LayerNorm>,
    blocks: Vec<Block>,
    final_norm: LayerNorm,
}

impl ImageEncoder {
    /// The encoder under `vb` (`vision_model` of a CLIP checkpoint, the root of a ViT one).
    pub fn new(cfg: &VitConfig, naming: Naming, vb: VarBuilder) -> Result<Self> {
        let (h, p, eps) = (cfg.hidden_size, cfg.patch_size, cfg.layer_norm_eps);
        let conv = Conv2dConfig {
            stride: p,
            ..Default::default()
        };
        let positions = (cfg.image_size / p).pow(2) + 1;
        let (patch_embedding, class_embedding, position_embedding, pre_norm, layers, final_norm) =
            match naming {
                Naming::Clip => {
                    let e = vb.pp("embeddings");
                    (
                        conv2d_no_bias(cfg.num_channels, h, p, conv, e.pp("patch_embedding"))?,
                        e.get(h, "class_embedding")?,
                        e.get((positions, h), "position_embedding.weight")?,
                        Some(layer_norm(h, eps, vb.pp("pre_layrnorm"))?),
                        vb.pp("encoder.layers"),
                        layer_norm(h, eps, vb.pp("post_layernorm"))?,
                    )
                }
                Naming::Vit => {
                    let e = vb.pp("embeddings");
                    (
                        conv2d(
                            cfg.num_channels,
                            h,
                            p,
                            conv,
                            e.pp("patch_embeddings.projection"),
                        )?,
                        e.get((1, 1, h), "cls_token")?.reshape(h)?,
                        e.get((1, positions, h), "position_embeddings")?
                            .reshape((positions, h))?,
                        None,
                        vb.pp("encoder.layer"),
                        layer_norm(h, eps, vb.pp("layernorm"))?,
                    )
                }
            };
        let blocks = (0..cfg.num_hidden_layers)
            .map(|i| Block::new(cfg, naming, layers.pp(i)))
            .collect::<Result<_>>()?;
        Ok(Self {
            config: cfg.clone(),
            patch_embedding,
            class_embedding,
            position_embedding,
            pre_norm,
            blocks,
            final_norm,
        })
    }

    /// The final-normed class token `[b, hidden]` of images `[b, channels, size, size]`.
    pub fn forward(&self, images: &Tensor) -> Result<Tensor> {
        let b = images.dim(0)?;
        let h = self.config.hidden_size;
        let patches = self
            .patch_embedding
            .forward(images)?
            .flatten_from(2)?
            .transpose(1, 2)?;
        let class = self.class_embedding.reshape((1, 1, h))?.expand((b, 1, h))?;
        let mut xs = Tensor::cat(&[&class, &patches], 1)?
            .broadcast_add(&self.position_embedding.unsqueeze(0)?)?;
        if let Some(norm) = &self.pre_norm {
            xs = norm.forward(&xs)?;
        }
        for block in &self.blocks {
            xs = block.forward(&xs, self.config.num_attention_heads, self.config.activation)?;
        }
        self.final_norm.forward(&xs.i((.., 0))?.contiguous()?)
    }
}
