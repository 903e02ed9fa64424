//! The VAE decoder (ldm `Decoder`): latent to image. The input convolution, the middle block
//! (resnet, attention, resnet), then the levels from the lowest resolution up, each with
//! NUM_RES_BLOCKS + 1 resnet blocks (followed by attention at the configured resolutions) and,
//! except level 0, a 2x upsample; then GroupNorm, the output convolution and optional tanh.
//! Checkpoints store the levels as `up.0` (full resolution) to `up.{n-1}` (lowest).

use super::blocks::GroupNorm;
use super::blocks::{conv, normalize, AttnBlock, ResnetBlock, Upsample};
use super::config::{level_has_attention, DecoderConfig};
use super::conv::Conv;
use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;

#[derive(Debug, Clone)]
struct UpLevel {
    blocks: Vec<ResnetBlock>,
    attns: Vec<AttnBlock>,
    upsample: Option<Upsample>,
}

#[derive(Debug, Clone)]
pub struct Decoder {
    conv_in: Conv,
    mid_block_1: ResnetBlock,
    mid_attn_1: AttnBlock,
    mid_block_2: ResnetBlock,
    /// Levels in execution order: lowest resolution first.
    up: Vec<UpLevel>,
    norm_out: GroupNorm,
    conv_out: Conv,
    give_pre_end: bool,
    tanh_out: bool,
}

impl Decoder {
    pub fn new(cfg: &DecoderConfig, vb: VarBuilder) -> Result<Self> {
        let levels = cfg.ch_mult.len();
        let Some(last_mult) = cfg.ch_mult.last() else {
            candle_core::bail!("DECODER.CH_MULT is empty");
        };
        let mut block_in = cfg.ch * last_mult;
        let conv_in = conv(cfg.z_channels, block_in, 3, vb.pp("conv_in"))?;
        let vb_mid = vb.pp("mid");
        let mid_block_1 = ResnetBlock::new(block_in, block_in, vb_mid.pp("block_1"))?;
        let mid_attn_1 = AttnBlock::new(block_in, vb_mid.pp("attn_1"))?;
        let mid_block_2 = ResnetBlock::new(block_in, block_in, vb_mid.pp("block_2"))?;
        let mut up = Vec::with_capacity(levels);
        for (level, mult) in cfg.ch_mult.iter().enumerate().rev() {
            let vb_level = vb.pp("up").pp(level);
            let block_out = cfg.ch * mult;
            let with_attn = level_has_attention(&cfg.attn_resolutions, level, levels);
            let mut blocks = Vec::with_capacity(cfg.num_res_blocks + 1);
            let mut attns = Vec::new();
            for i in 0..=cfg.num_res_blocks {
                blocks.push(ResnetBlock::new(
                    block_in,
                    block_out,
                    vb_level.pp("block").pp(i),
                )?);
                block_in = block_out;
                if with_attn {
                    attns.push(AttnBlock::new(block_in, vb_level.pp("attn").pp(i))?);
                }
            }
            let upsample = if level != 0 {
                Some(Upsample::new(
                    block_in,
                    cfg.resamp_with_conv,
                    vb_level.pp("upsample"),
                )?)
            } else {
                None
            };
            up.push(UpLevel {
                blocks,
                attns,
                upsample,
            });
        }
        Ok(Self {
            conv_in,
            mid_block_1,
            mid_attn_1,
            mid_block_2,
            up,
            norm_out: normalize(block_in, vb.pp("norm_out"))?,
            conv_out: conv(block_in, cfg.out_ch, 3, vb.pp("conv_out"))?,
            give_pre_end: cfg.give_pre_end,
            tanh_out: cfg.tanh_out,
        })
    }
}

impl Module for Decoder {
    fn forward(&self, z: &Tensor) -> Result<Tensor> {
        let h = self.conv_in.forward(z)?;
        let h = self.mid_block_1.forward(&h)?;
        let h = self.mid_attn_1.forward(&h)?;
        let mut h = self.mid_block_2.forward(&h)?;
        for level in &self.up {
            for (i, block) in level.blocks.iter().enumerate() {
                h = block.forward(&h)?;
                if let Some(attn) = level.attns.get(i) {
                    h = attn.forward(&h)?;
                }
            }
            if let Some(upsample) = &level.upsample {
                h = upsample.forward(&h)?;
            }
        }
        if self.give_pre_end {
            return Ok(h);
        }
        let h = self
            .conv_out
            .fused(&h, Some((&self.norm_out, true)), None)?;
        if self.tanh_out {
            h.tanh()
        } else {
            Ok(h)
        }
    }
}
