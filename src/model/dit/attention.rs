//! Multi-head attention of the DiT blocks (upstream `MultiHeadAttention`): the self-attention
//! spans every token of every frame of one sample (long-context attention) with 3D RoPE, the
//! cross-attention lets each frame's tokens attend to that frame's own context rows only.
//! Queries and keys pass through RMSNorm; as upstream, keys are normalised with `norm_q` and
//! `norm_k` is loaded but never applied.

use super::config::Config;
use super::layers::RmsNorm;
use super::rope::RopeTables;
use crate::kernels;
use crate::model::linear::{linear, Linear};
use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;

#[derive(Debug, Clone)]
pub struct Attention {
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    norm_q: Option<RmsNorm>,
    num_heads: usize,
}

impl Attention {
    pub fn new(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        let dim = cfg.hidden_size;
        let norm_q = if cfg.qk_norm {
            // Upstream builds `norm_k` too and never applies it: it must be in the checkpoint.
            RmsNorm::new(dim, vb.pp("norm_k"))?;
            Some(RmsNorm::new(dim, vb.pp("norm_q"))?)
        } else {
            None
        };
        Ok(Self {
            q: linear(dim, dim, vb.pp("q"))?,
            k: linear(dim, dim, vb.pp("k"))?,
            v: linear(dim, dim, vb.pp("v"))?,
            o: linear(dim, dim, vb.pp("o"))?,
            norm_q,
            num_heads: cfg.num_heads,
        })
    }

    /// `[batch * tokens, dim]` -> `[batch, heads, tokens, head_dim]`, a view: the attention
    /// and RoPE kernels read it in place, so that training keeps no head-major copy.
    fn heads(&self, xs: &Tensor, batch: usize) -> Result<Tensor> {
        kernels::split_heads(xs, batch, self.num_heads)
    }

    /// Queries or keys of `batch` samples from `xs [batch * tokens, dim]`: the projection, the
    /// query RMSNorm (keys take it too, as upstream) where the model has it, split into heads
    /// and rotated by `rope` when given: `[batch, heads, tokens, head_dim]`.
    fn normed_heads(
        &self,
        proj: &Linear,
        xs: &Tensor,
        batch: usize,
        rope: Option<&RopeTables>,
    ) -> Result<Tensor> {
        let x = proj.forward(xs)?;
        match (&self.norm_q, rope) {
            (Some(norm), _) => norm.forward_heads(&x, batch, self.num_heads, rope),
            (None, Some(rope)) => rope.apply(&self.heads(&x, batch)?),
            (None, None) => self.heads(&x, batch),
        }
    }

    /// Self-attention of `batch` samples of the same frames, `[batch * tokens, dim]` (sample
    /// after sample): each sample's tokens attend to all of that sample's tokens, rotated by
    /// `rope`.
    pub fn self_attention(&self, xs: &Tensor, batch: usize, rope: &RopeTables) -> Result<Tensor> {
        let q = self.normed_heads(&self.q, xs, batch, Some(rope))?;
        let k = self.normed_heads(&self.k, xs, batch, Some(rope))?;
        let v = self.heads(&self.v.forward(xs)?, batch)?;
        // Linear layers in bf16 on the CPU: the long-context products in bf16 too.
        let out = scaled_dot_product_attention(&q, &k, &v, self.q.is_bf16())?;
        self.o.forward(&out)
    }

    /// The keys and values a frame's tokens attend to in cross-attention, from its embedded
    /// context `[rows, dim]`; they stay the same for every sampling step.
    pub fn context_keys_values(&self, context: &Tensor) -> Result<KeysValues> {
        Ok(KeysValues {
            k: self.normed_heads(&self.k, context, 1, None)?,
            v: self.heads(&self.v.forward(context)?, 1)?,
        })
    }

    /// Cross-attention of `samples.len()` samples of the same frames, `[batch * tokens, dim]`
    /// (sample after sample, each the frames' tokens one after another, `frame_tokens[i]`
    /// each): frame i of sample b attends to `samples[b][i]`.
    pub fn cross_attention(
        &self,
        xs: &Tensor,
        frame_tokens: &[usize],
        samples: &[&[KeysValues]],
    ) -> Result<Tensor> {
        let q = self.normed_heads(&self.q, xs, samples.len(), None)?;
        let mut outs = Vec::with_capacity(samples.len() * frame_tokens.len());
        for (b, frames) in samples.iter().enumerate() {
            let mut start = 0;
            for (&len, kv) in frame_tokens.iter().zip(*frames) {
                let q_f = q.narrow(0, b, 1)?.narrow(2, start, len)?;
                outs.push(scaled_dot_product_attention(&q_f, &kv.k, &kv.v, false)?);
                start += len;
            }
        }
        self.o.forward(&Tensor::cat(&outs, 0)?)
    }
}

/// Cross-attention keys and values of one frame's context, `[1, heads, rows, head_dim]` each.
#[derive(Debug, Clone)]
pub struct KeysValues {
    k: Tensor,
    v: Tensor,
}

/// `softmax(q k^T / sqrt(head_dim)) v` on `[batch, heads, tokens, head_dim]`, the softmax in
/// f32, with the heads merged back: `[batch * tokens, heads * head_dim]`; the two products in
/// bf16 with `bf16_products` where the CPU kernels run them.
pub fn scaled_dot_product_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    bf16_products: bool,
) -> Result<Tensor> {
    let scale = 1.0 / (q.dim(candle_core::D::Minus1)? as f64).sqrt();
    let out = if bf16_products {
        kernels::attention_merged_bf16_products(q, k, v, scale)?
    } else {
        kernels::attention_merged(q, k, v, scale)?
    };
    let (batch, tokens, dim) = out.dims3()?;
    out.reshape((batch * tokens, dim))
}
