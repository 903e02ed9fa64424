//! One DiT block (upstream `DiTACEBlock`, PixArt adaLN-single): modulated self-attention with a
//! gate, unmodulated ungated cross-attention to the frames' contexts, modulated gated MLP.

use super::attention::{Attention, KeysValues};
use super::config::Config;
use super::layers::{modulated_layer_norm, Mlp};
use super::rope::RopeTables;
use crate::kernels;
use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;

#[derive(Debug, Clone)]
pub struct DitBlock {
    /// Learnt offsets of shift/scale/gate for attention and MLP, `[6, hidden]`.
    scale_shift_table: Tensor,
    attn: Attention,
    cross_attn: Attention,
    mlp: Mlp,
}

/// The six modulation vectors of a block, each `[1, hidden]`.
struct Modulation {
    shift_msa: Tensor,
    scale_msa: Tensor,
    gate_msa: Tensor,
    shift_mlp: Tensor,
    scale_mlp: Tensor,
    gate_mlp: Tensor,
}

impl DitBlock {
    pub fn new(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        let hidden = cfg.hidden_size;
        Ok(Self {
            scale_shift_table: vb.get((6, hidden), "scale_shift_table")?,
            attn: Attention::new(cfg, vb.pp("attn"))?,
            cross_attn: Attention::new(cfg, vb.pp("cross_attn"))?,
            mlp: Mlp::new(hidden, cfg.mlp_hidden(), hidden, vb.pp("mlp"))?,
        })
    }

    /// `scale_shift_table + t0.reshape(6, hidden)`, split in six.
    fn modulation(&self, t0: &Tensor) -> Result<Modulation> {
        let table = (&self.scale_shift_table + t0.reshape(self.scale_shift_table.shape())?)?;
        let row = |i: usize| table.narrow(0, i, 1);
        Ok(Modulation {
            shift_msa: row(0)?,
            scale_msa: row(1)?,
            gate_msa: row(2)?,
            shift_mlp: row(3)?,
            scale_mlp: row(4)?,
            gate_mlp: row(5)?,
        })
    }

    /// `xs`: `[batch * tokens, hidden]`, the tokens of `cross_kv.len()` samples of the same
    /// frames at the same timestep, sample after sample; `t0`: `[1, 6*hidden]` from `t_block`;
    /// `frame_tokens` per frame; `cross_kv` per sample, per frame.
    pub fn forward(
        &self,
        xs: &Tensor,
        t0: &Tensor,
        rope: &RopeTables,
        frame_tokens: &[usize],
        cross_kv: &[&[KeysValues]],
    ) -> Result<Tensor> {
        let m = self.modulation(t0)?;
        let h = modulated_layer_norm(xs, &m.shift_msa, &m.scale_msa)?;
        let h = self.attn.self_attention(&h, cross_kv.len(), rope)?;
        let xs = kernels::gated_residual(xs, &h, &m.gate_msa)?;
        let xs = (&xs
            + self
                .cross_attn
                .cross_attention(&xs, frame_tokens, cross_kv)?)?;
        let h = modulated_layer_norm(&xs, &m.shift_mlp, &m.scale_mlp)?;
        let h = self.mlp.forward(&h)?;
        kernels::gated_residual(&xs, &h, &m.gate_mlp)
    }

    /// The cross-attention keys and values of a frame's embedded context `[rows, hidden]`.
    pub fn context_keys_values(&self, context: &Tensor) -> Result<KeysValues> {
        self.cross_attn.context_keys_values(context)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    #[test]
    fn modulation_adds_the_table_to_the_timestep_rows_in_upstream_order() {
        let dev = Device::Cpu;
        let cfg = Config {
            patch_size: 2,
            in_channels: 4,
            hidden_size: 12,
            depth: 1,
            num_heads: 2,
            mlp_ratio: 1.0,
            pred_sigma: true,
            y_channels: 8,
            max_seq_len: 8,
            qk_norm: true,
            use_grad_checkpoint: false,
        };
        let mut block = DitBlock::new(&cfg, VarBuilder::zeros(DType::F32, &dev)).unwrap();
        block.scale_shift_table = Tensor::arange(0f32, 72.0, &dev)
            .unwrap()
            .reshape((6, 12))
            .unwrap();
        // t0 holds 1000 * (row + 1) in each of its six hidden-size pieces.
        let t0: Vec<f32> = (0..72).map(|i| 1000.0 * (i / 12 + 1) as f32).collect();
        let t0 = Tensor::from_vec(t0, (1, 72), &dev).unwrap();
        let m = block.modulation(&t0).unwrap();
        let rows = [
            &m.shift_msa,
            &m.scale_msa,
            &m.gate_msa,
            &m.shift_mlp,
            &m.scale_mlp,
            &m.gate_mlp,
        ];
        for (r, row) in rows.iter().enumerate() {
            assert_eq!(row.dims(), &[1, 12]);
            let want: Vec<f32> = (0..12)
                .map(|j| (r * 12 + j) as f32 + 1000.0 * (r + 1) as f32)
                .collect();
            assert_eq!(row.flatten_all().unwrap().to_vec1::<f32>().unwrap(), want);
        }
    }
}
