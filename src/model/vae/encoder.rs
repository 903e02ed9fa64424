//! The VAE encoder (ldm `Encoder`): image to the moments of the latent posterior. Each level
//! has NUM_RES_BLOCKS resnet blocks (each followed by attention at the configured resolutions)
//! and, except the last, a 2x downsample; then the middle block (resnet, attention, resnet),
//! GroupNorm, swish and the output convolution to 2 x Z_CHANNELS (mean and log-variance).

use super::blocks::GroupNorm;
use super::blocks::{conv, normalize, AttnBlock, Downsample, ResnetBlock};
use super::config::{level_has_attention, EncoderConfig};
use super::conv::Conv;
use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;

#[derive(Debug, Clone)]
struct DownLevel {
    blocks: Vec<ResnetBlock>,
    attns: Vec<AttnBlock>,
    downsample: Option<Downsample>,
}

#[derive(Debug, Clone)]
pub struct Encoder {
    conv_in: Conv,
    down: Vec<DownLevel>,
    mid_block_1: ResnetBlock,
    mid_attn_1: AttnBlock,
    mid_block_2: ResnetBlock,
    norm_out: GroupNorm,
    conv_out: Conv,
}

impl Encoder {
    pub fn new(cfg: &EncoderConfig, vb: VarBuilder) -> Result<Self> {
        let levels = cfg.ch_mult.len();
        let conv_in = conv(cfg.in_channels, cfg.ch, 3, vb.pp("conv_in"))?;
        let mut block_in = cfg.ch;
        let mut down = Vec::with_capacity(levels);
        for (level, mult) in cfg.ch_mult.iter().enumerate() {
            let vb_level = vb.pp("down").pp(level);
            let block_out = cfg.ch * mult;
            let with_attn = level_has_attention(&cfg.attn_resolutions, level, levels);
            let mut blocks = Vec::with_capacity(cfg.num_res_blocks);
            let mut attns = Vec::new();
            for i in 0..cfg.num_res_blocks {
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
            let downsample = if level + 1 != levels {
                Some(Downsample::new(
                    block_in,
                    cfg.resamp_with_conv,
                    vb_level.pp("downsample"),
                )?)
            } else {
                None
            };
            down.push(DownLevel {
                blocks,
                attns,
                downsample,
            });
        }
        let vb_mid = vb.pp("mid");
        let z_out = if cfg.double_z {
            2 * cfg.z_channels
        } else {
            cfg.z_channels
        };
        Ok(Self {
            conv_in,
            down,
            mid_block_1: ResnetBlock::new(block_in, block_in, vb_mid.pp("block_1"))?,
            mid_attn_1: AttnBlock::new(block_in, vb_mid.pp("attn_1"))?,
            mid_block_2: ResnetBlock::new(block_in, block_in, vb_mid.pp("block_2"))?,
            norm_out: normalize(block_in, vb.pp("norm_out"))?,
            conv_out: conv(block_in, z_out, 3, vb.pp("conv_out"))?,
        })
    }
}

impl Module for Encoder {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut h = self.conv_in.forward(x)?;
        for level in &self.down {
            for (i, block) in level.blocks.iter().enumerate() {
                h = block.forward(&h)?;
                if let Some(attn) = level.attns.get(i) {
                    h = attn.forward(&h)?;
                }
            }
            if let Some(downsample) = &level.downsample {
                h = downsample.forward(&h)?;
            }
        }
        let h = self.mid_block_1.forward(&h)?;
        let h = self.mid_attn_1.forward(&h)?;
        let h = self.mid_block_2.forward(&h)?;
        self.conv_out.fused(&h, Some((&self.norm_out, true)), None)
    }
}
