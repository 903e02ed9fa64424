//! Multi-head attention of the DiT blocks (upstream `MultiHeadAttention`): the self-attention
//! spans every token of every frame of one sample (long-context attention) with 3D RoPE, the
//! cross-attention lets each frame's tokens attend to that frame's own context rows only.
//! Queries and keys pass through RMSNorm; as upstream, keys are normalised with `norm_q` and
//! `norm_k` is loaded but never applied.

use super::config::Config;
use super::layers::RmsNorm;
use super::rope::RopeTables;
use candle_core::{DType, Module, Result, Tensor};
use candle_nn::{linear, Linear, VarBuilder};

/// Most attention scores held at once (queries are processed in chunks below this).
const MAX_SCORES: usize = 1 << 26;

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

    /// `[tokens, dim]` -> `[1, heads, tokens, head_dim]`.
    fn heads(&self, xs: &Tensor) -> Result<Tensor> {
        let (tokens, dim) = xs.dims2()?;
        xs.reshape((1, tokens, self.num_heads, dim / self.num_heads))?
            .transpose(1, 2)?
            .contiguous()
    }

    /// `[1, heads, tokens, head_dim]` -> `[tokens, dim]`.
    fn merge_heads(xs: &Tensor) -> Result<Tensor> {
        let (_, heads, tokens, head_dim) = xs.dims4()?;
        xs.transpose(1, 2)?.reshape((tokens, heads * head_dim))
    }

    /// Linear projection then the query RMSNorm (used for keys as well, as upstream).
    fn project_normed(&self, proj: &Linear, xs: &Tensor) -> Result<Tensor> {
        let x = proj.forward(xs)?;
        match &self.norm_q {
            Some(norm) => norm.forward(&x),
            None => Ok(x),
        }
    }

    /// Self-attention over all `[tokens, dim]` of one sample, rotated by `rope`.
    pub fn self_attention(&self, xs: &Tensor, rope: &RopeTables) -> Result<Tensor> {
        let q = rope.apply(&self.heads(&self.project_normed(&self.q, xs)?)?)?;
        let k = rope.apply(&self.heads(&self.project_normed(&self.k, xs)?)?)?;
        let v = self.heads(&self.v.forward(xs)?)?;
        let out = scaled_dot_product_attention(&q, &k, &v)?;
        self.o.forward(&Self::merge_heads(&out)?)
    }

    /// Cross-attention of one sample: the tokens `[tokens, dim]` are the frames' tokens one
    /// after another (`frame_tokens[i]` each); frame i attends to `contexts[i]` (`[rows_i, dim]`).
    pub fn cross_attention(
        &self,
        xs: &Tensor,
        frame_tokens: &[usize],
        contexts: &[Tensor],
    ) -> Result<Tensor> {
        let q = self.project_normed(&self.q, xs)?;
        let mut outs = Vec::with_capacity(frame_tokens.len());
        let mut start = 0;
        for (&len, context) in frame_tokens.iter().zip(contexts) {
            let q_f = self.heads(&q.narrow(0, start, len)?)?;
            let k_f = self.heads(&self.project_normed(&self.k, context)?)?;
            let v_f = self.heads(&self.v.forward(context)?)?;
            outs.push(Self::merge_heads(&scaled_dot_product_attention(
                &q_f, &k_f, &v_f,
            )?)?);
            start += len;
        }
        self.o.forward(&Tensor::cat(&outs, 0)?)
    }
}

/// `softmax(q k^T / sqrt(head_dim)) v` on `[1, heads, tokens, head_dim]`, the softmax in f32,
/// queries taken in chunks so that at most [`MAX_SCORES`] scores exist at a time.
pub fn scaled_dot_product_attention(q: &Tensor, k: &Tensor, v: &Tensor) -> Result<Tensor> {
    let (_, heads, q_len, head_dim) = q.dims4()?;
    let k_len = k.dim(2)?;
    let scale = 1.0 / (head_dim as f64).sqrt();
    let k_t = k.t()?;
    let rows = (MAX_SCORES / (heads * k_len).max(1)).max(1);
    let mut outs = Vec::with_capacity(q_len.div_ceil(rows));
    for start in (0..q_len).step_by(rows) {
        let q_c = q.narrow(2, start, rows.min(q_len - start))?;
        let scores = (q_c.matmul(&k_t)? * scale)?.to_dtype(DType::F32)?;
        let probs = softmax_last_dim(&scores)?.to_dtype(v.dtype())?;
        outs.push(probs.matmul(v)?);
    }
    Tensor::cat(&outs, 2)
}

/// Softmax over the last dimension: candle's fused kernel, which has no backward pass, unless
/// the scores take part in a gradient computation (training), then the composed form.
fn softmax_last_dim(xs: &Tensor) -> Result<Tensor> {
    if xs.track_op() {
        candle_nn::ops::softmax(xs, candle_core::D::Minus1)
    } else {
        candle_nn::ops::softmax_last_dim(xs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn attention_weights_values_by_softmax_of_scaled_scores() {
        let dev = Device::Cpu;
        // One head of size 4, one query, two keys.
        let q = Tensor::new(&[[[[1f32, 0.0, 0.0, 0.0]]]], &dev).unwrap();
        let k = Tensor::new(&[[[[2f32, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]]]], &dev).unwrap();
        let v = Tensor::new(&[[[[1f32, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0]]]], &dev).unwrap();
        let out = scaled_dot_product_attention(&q, &k, &v).unwrap();
        let got = out.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        // scores (2/2, 0) -> weights (e/(e+1), 1/(e+1)).
        let e = 1f32.exp();
        let want = [e / (e + 1.0), 1.0 / (e + 1.0), 0.0, 0.0];
        for (a, b) in got.iter().zip(want) {
            assert!((a - b).abs() < 1e-6, "{got:?} vs {want:?}");
        }
    }
}
