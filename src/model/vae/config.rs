//! The VAE's configuration, read from the `MODEL.FIRST_STAGE_MODEL` section of the official
//! YAML (scepter's `AutoencoderKL` with its `Encoder` and `Decoder` backbones). Keys the model
//! does not compute with (`NAME`, `PRETRAINED_MODEL`, `DROPOUT`, `LOSS`, ...) are ignored.

use serde::Deserialize;

fn ch() -> usize {
    128
}
fn out_ch() -> usize {
    3
}
fn num_res_blocks() -> usize {
    2
}
fn in_channels() -> usize {
    3
}
fn ch_mult() -> Vec<usize> {
    vec![1, 2, 4, 4]
}
fn z_channels() -> usize {
    4
}
fn embed_dim() -> usize {
    4
}
fn yes() -> bool {
    true
}

/// `AutoencoderKL`: the encoder, the decoder and the latent width between them.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Config {
    /// Channels of the latent (the posterior mean).
    #[serde(rename = "EMBED_DIM", default = "embed_dim")]
    pub embed_dim: usize,
    #[serde(rename = "ENCODER")]
    pub encoder: EncoderConfig,
    #[serde(rename = "DECODER")]
    pub decoder: DecoderConfig,
}

/// scepter's `Encoder` backbone.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct EncoderConfig {
    #[serde(rename = "CH", default = "ch")]
    pub ch: usize,
    #[serde(rename = "NUM_RES_BLOCKS", default = "num_res_blocks")]
    pub num_res_blocks: usize,
    #[serde(rename = "IN_CHANNELS", default = "in_channels")]
    pub in_channels: usize,
    /// Relative resolutions (1 = the lowest level, 2 the one above, ...) whose resnet blocks are
    /// followed by self-attention. The middle block has attention regardless.
    #[serde(rename = "ATTN_RESOLUTIONS", default)]
    pub attn_resolutions: Vec<usize>,
    #[serde(rename = "CH_MULT", default = "ch_mult")]
    pub ch_mult: Vec<usize>,
    #[serde(rename = "Z_CHANNELS", default = "z_channels")]
    pub z_channels: usize,
    /// Whether the encoder outputs mean and log-variance (2 x Z_CHANNELS); AutoencoderKL needs it.
    #[serde(rename = "DOUBLE_Z", default = "yes")]
    pub double_z: bool,
    /// Downsampling by a stride-2 convolution (true) or by 2x2 average pooling (false).
    #[serde(rename = "RESAMP_WITH_CONV", default = "yes")]
    pub resamp_with_conv: bool,
}

/// scepter's `Decoder` backbone.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct DecoderConfig {
    #[serde(rename = "CH", default = "ch")]
    pub ch: usize,
    #[serde(rename = "OUT_CH", default = "out_ch")]
    pub out_ch: usize,
    #[serde(rename = "NUM_RES_BLOCKS", default = "num_res_blocks")]
    pub num_res_blocks: usize,
    /// Relative resolutions with attention after their resnet blocks, as in [`EncoderConfig`].
    #[serde(rename = "ATTN_RESOLUTIONS", default)]
    pub attn_resolutions: Vec<usize>,
    #[serde(rename = "CH_MULT", default = "ch_mult")]
    pub ch_mult: Vec<usize>,
    #[serde(rename = "Z_CHANNELS", default = "z_channels")]
    pub z_channels: usize,
    /// Upsampling followed by a convolution (true) or nearest-neighbour upsampling alone.
    #[serde(rename = "RESAMP_WITH_CONV", default = "yes")]
    pub resamp_with_conv: bool,
    /// Return the features before the output norm and convolution.
    #[serde(rename = "GIVE_PRE_END", default)]
    pub give_pre_end: bool,
    /// Squash the output with tanh.
    #[serde(rename = "TANH_OUT", default)]
    pub tanh_out: bool,
}

/// Whether the level `level` of `num_levels` (0 = full resolution) has attention: scepter counts
/// resolutions from the lowest level, which is 1, doubling towards the image.
pub(crate) fn level_has_attention(
    attn_resolutions: &[usize],
    level: usize,
    num_levels: usize,
) -> bool {
    attn_resolutions.contains(&(1 << (num_levels - 1 - level)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_tiny_model_yaml_section() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/ace-tiny/model/ace_tiny.yaml"
        );
        let text = std::fs::read_to_string(path).unwrap();
        let yaml: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
        let cfg: Config =
            serde_yaml::from_value(yaml["MODEL"]["FIRST_STAGE_MODEL"].clone()).unwrap();
        assert_eq!(cfg.embed_dim, 4);
        assert_eq!(cfg.encoder.ch, 32);
        assert_eq!(cfg.encoder.ch_mult, vec![1, 1, 2, 2]);
        assert_eq!(cfg.encoder.num_res_blocks, 1);
        assert!(cfg.encoder.double_z);
        assert!(cfg.encoder.attn_resolutions.is_empty());
        assert_eq!(cfg.decoder.out_ch, 3);
        assert!(!cfg.decoder.tanh_out && !cfg.decoder.give_pre_end);
    }

    #[test]
    fn attention_resolutions_count_from_the_lowest_level() {
        assert!(level_has_attention(&[1], 3, 4));
        assert!(!level_has_attention(&[1], 0, 4));
        assert!(level_has_attention(&[8], 0, 4));
        assert!(!level_has_attention(&[], 3, 4));
    }
}
