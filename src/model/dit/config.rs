//! The DiT's hyper-parameters, read from the `MODEL.DIFFUSION_MODEL` section of an ACE
//! inference YAML (upstream `DiTACE.para_dict`); keys the DiT does not use (`NAME`,
//! `PRETRAINED_MODEL`, ...) are ignored.

use crate::{Error, Result};
use serde::Deserialize;
use std::path::Path;

/// DiTACE configuration, field names as the upstream YAML keys.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Config {
    /// Side of the square latent patch that becomes one token.
    #[serde(rename = "PATCH_SIZE", default = "default_patch_size")]
    pub patch_size: usize,
    /// Latent channels (the mask channel comes on top of these).
    #[serde(rename = "IN_CHANNELS", default = "default_in_channels")]
    pub in_channels: usize,
    #[serde(rename = "HIDDEN_SIZE", default = "default_hidden_size")]
    pub hidden_size: usize,
    #[serde(rename = "DEPTH", default = "default_depth")]
    pub depth: usize,
    #[serde(rename = "NUM_HEADS", default = "default_num_heads")]
    pub num_heads: usize,
    #[serde(rename = "MLP_RATIO", default = "default_mlp_ratio")]
    pub mlp_ratio: f64,
    /// Whether the model also predicts a variance (doubling its output channels).
    #[serde(rename = "PRED_SIGMA", default = "default_pred_sigma")]
    pub pred_sigma: bool,
    /// Width of the text encoder's hidden states.
    #[serde(rename = "Y_CHANNELS", default = "default_y_channels")]
    pub y_channels: usize,
    /// Length of the RoPE tables: the largest frame count, row count and column count (in tokens).
    #[serde(rename = "MAX_SEQ_LEN", default = "default_max_seq_len")]
    pub max_seq_len: usize,
    /// RMSNorm on queries and keys.
    #[serde(rename = "QK_NORM", default)]
    pub qk_norm: bool,
    /// Training runs each block's forward pass again in the backward pass instead of keeping
    /// its activations (upstream `checkpoint_sequential` over the blocks, one segment each; its
    /// last block runs plainly). Inference ignores it.
    #[serde(rename = "USE_GRAD_CHECKPOINT", default)]
    pub use_grad_checkpoint: bool,
}

fn default_patch_size() -> usize {
    2
}
fn default_in_channels() -> usize {
    4
}
fn default_hidden_size() -> usize {
    1152
}
fn default_depth() -> usize {
    28
}
fn default_num_heads() -> usize {
    16
}
fn default_mlp_ratio() -> f64 {
    4.0
}
fn default_pred_sigma() -> bool {
    true
}
fn default_y_channels() -> usize {
    4096
}
fn default_max_seq_len() -> usize {
    1024
}

impl Config {
    /// Reads `MODEL.DIFFUSION_MODEL` of an ACE inference YAML file.
    pub fn from_yaml_file(path: &Path) -> Result<Self> {
        let bad = |message: String| Error::Config {
            path: path.to_path_buf(),
            message,
        };
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let yaml: serde_yaml::Value =
            serde_yaml::from_str(&text).map_err(|e| bad(format!("invalid YAML: {e}")))?;
        let section = yaml
            .get("MODEL")
            .and_then(|m| m.get("DIFFUSION_MODEL"))
            .ok_or_else(|| bad("no MODEL.DIFFUSION_MODEL section".into()))?;
        let cfg: Config = serde_yaml::from_value(section.clone())
            .map_err(|e| bad(format!("MODEL.DIFFUSION_MODEL: {e}")))?;
        cfg.validate().map_err(|e| bad(e.to_string()))?;
        Ok(cfg)
    }

    /// Checks the constraints upstream asserts: heads divide the width into even head sizes.
    pub fn validate(&self) -> Result<()> {
        let bad = |message: String| Error::invalid("DiT config", message);
        if self.num_heads == 0 || !self.hidden_size.is_multiple_of(self.num_heads) {
            return Err(bad(format!(
                "HIDDEN_SIZE {} is not a multiple of NUM_HEADS {}",
                self.hidden_size, self.num_heads
            )));
        }
        if !self.head_dim().is_multiple_of(2) || self.head_dim() < 6 {
            return Err(bad(format!(
                "head size {} (HIDDEN_SIZE / NUM_HEADS) must be even and at least 6",
                self.head_dim()
            )));
        }
        if self.patch_size == 0 || self.in_channels == 0 || self.max_seq_len == 0 {
            return Err(bad(
                "PATCH_SIZE, IN_CHANNELS and MAX_SEQ_LEN must be positive".into(),
            ));
        }
        Ok(())
    }

    /// Width of one attention head.
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_heads
    }

    /// Channels of the final layer per patch position: doubled when the variance is predicted.
    pub fn out_channels(&self) -> usize {
        if self.pred_sigma {
            2 * self.in_channels
        } else {
            self.in_channels
        }
    }

    /// Hidden width of the blocks' MLP (`int(hidden_size * mlp_ratio)`, as upstream).
    pub fn mlp_hidden(&self) -> usize {
        (self.hidden_size as f64 * self.mlp_ratio) as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_diffusion_model_section_and_ignores_other_keys() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.yaml");
        std::fs::write(
            &path,
            "MODEL:\n  DIFFUSION_MODEL:\n    NAME: DiTACE\n    PRETRAINED_MODEL: x.pth\n    \
             HIDDEN_SIZE: 64\n    DEPTH: 2\n    NUM_HEADS: 4\n    Y_CHANNELS: 32\n    QK_NORM: True\n",
        )
        .unwrap();
        let cfg = Config::from_yaml_file(&path).unwrap();
        assert_eq!(cfg.hidden_size, 64);
        assert_eq!(cfg.depth, 2);
        assert_eq!(cfg.head_dim(), 16);
        assert_eq!(cfg.patch_size, 2);
        assert_eq!(cfg.out_channels(), 8);
        assert_eq!(cfg.mlp_hidden(), 256);
        assert!(cfg.qk_norm);
    }

    #[test]
    fn rejects_heads_that_do_not_divide_the_width() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.yaml");
        std::fs::write(
            &path,
            "MODEL:\n  DIFFUSION_MODEL:\n    HIDDEN_SIZE: 66\n    NUM_HEADS: 4\n",
        )
        .unwrap();
        let err = Config::from_yaml_file(&path).unwrap_err().to_string();
        assert!(err.contains("NUM_HEADS"), "{err}");
    }
}
