//! The library's error type: every failure names the file or tensor it concerns, so that the
//! binary can print one clear line per bad input.

use std::path::PathBuf;

/// Errors of the `ace` library.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An image file could not be read, decoded or written.
    #[error("{path}: {message}")]
    Image { path: PathBuf, message: String },

    /// A filesystem operation failed on a path.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// An output cannot be written where it was asked for (a folder, a file in the way of its
    /// parent folders, one of the inputs, the output of another job).
    #[error("{path}: {message}")]
    Output { path: PathBuf, message: String },

    /// An argument or parameter value is out of its domain.
    #[error("invalid {what}: {message}")]
    Invalid { what: String, message: String },

    /// A model file (ONNX, Caffe, checkpoint) is missing, unreadable or of the wrong layout.
    #[error("{path}: {message}")]
    Model { path: PathBuf, message: String },

    /// An operation that runs a model was asked for without one.
    #[error("{what} needs a model: {hint}")]
    ModelRequired { what: String, hint: String },

    /// A tensor has a shape other than the one the model asks for.
    #[error("tensor {name}: expected shape {expected:?}, found {found:?}")]
    Shape {
        name: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },

    /// Training produced a non-finite loss, gradient norm or weight; nothing of that step was
    /// kept.
    #[error("training diverged at step {step}: {what} is not finite")]
    Diverged { step: u64, what: String },

    /// A configuration file does not follow the schema.
    #[error("{path}: {message}")]
    Config { path: PathBuf, message: String },

    /// An OpenCV call failed.
    #[error("opencv: {0}")]
    OpenCv(#[from] opencv::Error),

    /// A tensor operation failed.
    #[error("candle: {0}")]
    Candle(#[from] candle_core::Error),
}

impl Error {
    /// Shorthand for an [`Error::Invalid`].
    pub fn invalid(what: impl Into<String>, message: impl Into<String>) -> Self {
        Error::Invalid {
            what: what.into(),
            message: message.into(),
        }
    }

    /// Shorthand for an [`Error::Output`].
    pub fn output(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        Error::Output {
            path: path.into(),
            message: message.into(),
        }
    }

    /// Shorthand for an [`Error::Io`].
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}

/// Result with the library's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
