//! Shared plumbing of the model-backed analysis operations (`depth`, `pose`): which model files
//! OpenCV DNN reads, loading them with errors that name the file, and one network per thread.
//! An OpenCV `Net` is not `Sync` (a forward pass mutates it), so every thread keeps its own
//! copy, loaded on first use; batches then run in parallel without locks.

use crate::{Error, Result};
use opencv::core::{Mat, CV_32F};
use opencv::dnn::Net;
use opencv::prelude::*;
use std::cell::RefCell;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// The command-line names of the flags that give a network operation its model files and its
/// input size, so that messages name the flags of the command at hand (`ace analyze depth
/// --model`, `ace control depth --analyzer-model`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlagNames {
    pub model: &'static str,
    pub size: &'static str,
}

/// The files of one network: an ONNX file, or a Caffe `.prototxt` + `.caffemodel` pair.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ModelFiles {
    /// An ONNX graph with its weights.
    Onnx(PathBuf),
    /// A Caffe network: the text definition and the binary weights.
    Caffe {
        prototxt: PathBuf,
        caffemodel: PathBuf,
    },
}

impl ModelFiles {
    /// Classifies the files given with the flag `flag` by extension: one `.onnx`, or one
    /// `.prototxt` and one `.caffemodel` in either order. Each file must exist.
    pub fn from_paths(paths: &[PathBuf], flag: &str) -> Result<Self> {
        for p in paths {
            if !p.is_file() {
                return Err(model_error(p, "no such model file"));
            }
        }
        let ext = |p: &Path| {
            p.extension()
                .map(|e| e.to_string_lossy().to_ascii_lowercase())
                .unwrap_or_default()
        };
        let find = |e: &str| paths.iter().find(|p| ext(p) == e);
        if let Some(p) = paths
            .iter()
            .find(|p| !matches!(ext(p).as_str(), "onnx" | "prototxt" | "caffemodel"))
        {
            return Err(model_error(
                p,
                "not a model file OpenCV DNN reads here (expected .onnx, or .prototxt with .caffemodel)",
            ));
        }
        match (
            paths.len(),
            find("onnx"),
            find("prototxt"),
            find("caffemodel"),
        ) {
            (1, Some(onnx), _, _) => Ok(ModelFiles::Onnx(onnx.clone())),
            (2, None, Some(prototxt), Some(caffemodel)) => Ok(ModelFiles::Caffe {
                prototxt: prototxt.clone(),
                caffemodel: caffemodel.clone(),
            }),
            (_, _, Some(p), None) | (_, _, None, Some(p)) if paths.len() == 1 => Err(model_error(
                p,
                &format!(
                    "a Caffe model needs both its .prototxt and its .caffemodel (give {flag} twice)"
                ),
            )),
            _ => Err(Error::invalid(
                flag,
                format!(
                    "expected one .onnx file or a .prototxt and a .caffemodel, got {}",
                    paths
                        .iter()
                        .map(|p| p.display().to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            )),
        }
    }

    /// The file named in errors about the network as a whole (the weights).
    pub fn weights(&self) -> &Path {
        match self {
            ModelFiles::Onnx(p) => p,
            ModelFiles::Caffe { caffemodel, .. } => caffemodel,
        }
    }

    /// Reads the network from disk.
    fn load(&self) -> Result<Net> {
        let path_str = |p: &Path| {
            p.to_str()
                .map(str::to_owned)
                .ok_or_else(|| model_error(p, "path is not valid UTF-8"))
        };
        let net = match self {
            ModelFiles::Onnx(p) => opencv::dnn::read_net_from_onnx(&path_str(p)?),
            ModelFiles::Caffe {
                prototxt,
                caffemodel,
            } => opencv::dnn::read_net_from_caffe(&path_str(prototxt)?, &path_str(caffemodel)?),
        }
        .map_err(|e| {
            model_error(
                self.weights(),
                &format!("OpenCV DNN cannot load it: {}", first_line(&e.message)),
            )
        })?;
        if net.empty()? {
            return Err(model_error(
                self.weights(),
                "OpenCV DNN cannot load it: no layers",
            ));
        }
        Ok(net)
    }
}

fn model_error(path: &Path, message: &str) -> Error {
    Error::Model {
        path: path.to_path_buf(),
        message: message.to_string(),
    }
}

fn first_line(s: &str) -> &str {
    s.lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or(s)
}

thread_local! {
    /// This thread's networks, by model files.
    static NETS: RefCell<HashMap<ModelFiles, Net>> = RefCell::new(HashMap::new());
}

/// Loads `files` into this thread's cache unless already there, so a bad model fails before
/// any image is read.
pub fn preload(files: &ModelFiles) -> Result<()> {
    with_net(files, |_| Ok(()))
}

/// Runs `f` on this thread's copy of the network in `files`, loading it on first use.
pub fn with_net<T>(files: &ModelFiles, f: impl FnOnce(&mut Net) -> Result<T>) -> Result<T> {
    NETS.with(|nets| {
        let mut nets = nets.borrow_mut();
        if !nets.contains_key(files) {
            let net = files.load()?;
            nets.insert(files.clone(), net);
        }
        let net = nets
            .get_mut(files)
            .ok_or_else(|| model_error(files.weights(), "network cache lost the model"))?;
        f(net)
    })
}

/// A float tensor copied out of a network output.
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

/// Feeds `blob` (NCHW, f32) to the network in `files` and returns its (first) output.
pub fn forward(files: &ModelFiles, blob: &Mat) -> Result<Tensor> {
    with_net(files, |net| {
        net.set_input_def(blob)?;
        let out = net.forward_single_def()?;
        tensor(&out).map_err(|e| match e {
            Error::Invalid { message, .. } => model_error(files.weights(), &message),
            e => e,
        })
    })
}

/// The shape and values of an f32 Mat of any rank.
pub fn tensor(m: &Mat) -> Result<Tensor> {
    if m.depth() != CV_32F || m.channels() != 1 {
        return Err(Error::invalid(
            "network output",
            format!("output is not a float tensor (Mat type {})", m.typ()),
        ));
    }
    let m = if m.is_continuous() {
        m.clone()
    } else {
        m.try_clone()?
    };
    let shape = m.mat_size().iter().map(|&d| d as usize).collect();
    Ok(Tensor {
        shape,
        data: m.data_typed::<f32>()?.to_vec(),
    })
}

/// An owned NCHW f32 Mat of `shape` holding `data`.
pub fn nchw(shape: [usize; 4], data: &[f32]) -> Result<Mat> {
    let sizes: Vec<i32> = shape.iter().map(|&d| d as i32).collect();
    Ok(Mat::new_nd_with_data(&sizes, data)?.try_clone()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/dnn")
            .join(name)
    }

    #[test]
    fn classifies_model_files_and_names_the_bad_one() {
        let onnx = fixture("depth.onnx");
        assert_eq!(
            ModelFiles::from_paths(std::slice::from_ref(&onnx), "--model").unwrap(),
            ModelFiles::Onnx(onnx.clone())
        );
        let missing = fixture("nope.onnx");
        let e = ModelFiles::from_paths(&[missing], "--model")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("nope.onnx") && e.contains("no such model file"),
            "{e}"
        );
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/make_dnn_fixtures.py");
        let e = ModelFiles::from_paths(&[script], "--model")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("make_dnn_fixtures.py") && e.contains("expected .onnx"),
            "{e}"
        );
    }

    #[test]
    fn caffe_needs_both_files_in_either_order() {
        let dir = tempfile::tempdir().unwrap();
        let proto = dir.path().join("pose.prototxt");
        let weights = dir.path().join("pose.caffemodel");
        std::fs::write(&proto, "name: \"x\"\n").unwrap();
        std::fs::write(&weights, b"\x00\x01").unwrap();
        let e = ModelFiles::from_paths(std::slice::from_ref(&proto), "--analyzer-model")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("pose.prototxt") && e.contains("--analyzer-model twice"),
            "{e}"
        );
        let files = ModelFiles::from_paths(&[weights.clone(), proto.clone()], "--model").unwrap();
        assert_eq!(
            files,
            ModelFiles::Caffe {
                prototxt: proto,
                caffemodel: weights.clone()
            }
        );
        // The weights are garbage: loading fails and names the caffemodel.
        let e = preload(&files).unwrap_err().to_string();
        assert!(
            e.contains("pose.caffemodel") && e.contains("cannot load"),
            "{e}"
        );
    }

    #[test]
    fn corrupt_onnx_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let bad = dir.path().join("broken.onnx");
        std::fs::write(&bad, b"this is not a protobuf").unwrap();
        let files = ModelFiles::from_paths(std::slice::from_ref(&bad), "--model").unwrap();
        let e = preload(&files).unwrap_err().to_string();
        assert!(
            e.contains("broken.onnx") && e.contains("cannot load"),
            "{e}"
        );
        assert_eq!(e.lines().count(), 1, "{e}");
    }

    #[test]
    fn each_thread_runs_its_own_network() {
        let files = ModelFiles::Onnx(fixture("depth.onnx"));
        let run = || forward(&files, &nchw([1, 3, 8, 8], &[0.5; 192]).unwrap()).unwrap();
        let outs: Vec<Tensor> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..3).map(|_| s.spawn(run)).collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for out in outs {
            // 0.5 * (0.5 + 0.25 + 0.25) + 0.1, averaged over 2x2 blocks.
            assert_eq!(out.shape, vec![1, 4, 4]);
            assert!(
                out.data.iter().all(|&v| (v - 0.6).abs() < 1e-6),
                "{:?}",
                out.data
            );
        }
    }
}
