//! Reading an embedding matrix (one row per image) for pair mining: a NumPy `.npy` file (N x D,
//! float32 or float64, C order; the header is parsed here) or a safetensors file holding a
//! tensor named `embeddings`, plus optional ids (one per line) naming the rows.

use crate::{Error, Result};
use std::io::Read;
use std::path::Path;

/// N rows of D values, row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct Embeddings {
    pub rows: usize,
    pub dim: usize,
    pub data: Vec<f32>,
}

impl Embeddings {
    /// Row `i`.
    pub fn row(&self, i: usize) -> &[f32] {
        &self.data[i * self.dim..(i + 1) * self.dim]
    }

    /// Scales every row to unit length (zero rows stay zero), so that dot products are cosine
    /// similarities.
    pub fn normalize(&mut self) {
        use rayon::prelude::*;
        self.data.par_chunks_mut(self.dim.max(1)).for_each(|row| {
            let norm = row.iter().map(|v| v * v).sum::<f32>().sqrt();
            if norm > 0.0 {
                row.iter_mut().for_each(|v| *v /= norm);
            }
        });
    }
}

/// Reads embeddings from `.npy` or `.safetensors` (chosen by the file's magic bytes).
pub fn load(path: &Path) -> Result<Embeddings> {
    let mut file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut magic = [0u8; 6];
    let is_npy = file.read_exact(&mut magic).is_ok() && &magic == b"\x93NUMPY";
    drop(file);
    let emb = if is_npy {
        load_npy(path)?
    } else {
        load_safetensors(path)?
    };
    if emb.rows == 0 || emb.dim == 0 {
        return Err(bad(
            path,
            format!("empty matrix ({} x {})", emb.rows, emb.dim),
        ));
    }
    if let Some(i) = emb.data.iter().position(|v| !v.is_finite()) {
        return Err(bad(
            path,
            format!("row {} holds a non-finite value", i / emb.dim),
        ));
    }
    Ok(emb)
}

fn bad(path: &Path, message: impl Into<String>) -> Error {
    Error::Config {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

/// The element types accepted.
#[derive(Debug, Clone, Copy)]
enum Elem {
    F32,
    F64,
}

/// Reads an `.npy` file: magic, version, header length, a Python dict literal with `descr`,
/// `fortran_order` and `shape`, then the data, streamed into the matrix.
fn load_npy(path: &Path) -> Result<Embeddings> {
    let mut file =
        std::io::BufReader::new(std::fs::File::open(path).map_err(|e| Error::io(path, e))?);
    let mut pre = [0u8; 8];
    file.read_exact(&mut pre)
        .map_err(|_| bad(path, "not a .npy file (truncated header)"))?;
    let header_len = match pre[6] {
        1 => {
            let mut b = [0u8; 2];
            file.read_exact(&mut b)
                .map_err(|_| bad(path, "truncated .npy header"))?;
            u16::from_le_bytes(b) as usize
        }
        2 | 3 => {
            let mut b = [0u8; 4];
            file.read_exact(&mut b)
                .map_err(|_| bad(path, "truncated .npy header"))?;
            u32::from_le_bytes(b) as usize
        }
        v => return Err(bad(path, format!("unsupported .npy version {v}"))),
    };
    let mut header = vec![0u8; header_len];
    file.read_exact(&mut header)
        .map_err(|_| bad(path, "truncated .npy header"))?;
    let header = String::from_utf8_lossy(&header);
    let (elem, rows, dim) = parse_npy_header(&header).map_err(|m| bad(path, m))?;
    let count = rows
        .checked_mul(dim)
        .ok_or_else(|| bad(path, "shape too large"))?;
    let width = match elem {
        Elem::F32 => 4,
        Elem::F64 => 8,
    };
    let mut data = Vec::with_capacity(count);
    let mut buf = vec![0u8; 1 << 20];
    let mut left = count * width;
    while left > 0 {
        let n = left.min(buf.len());
        file.read_exact(&mut buf[..n]).map_err(|_| {
            bad(
                path,
                format!(
                    "truncated data: expected {} bytes for shape ({rows}, {dim})",
                    count * width
                ),
            )
        })?;
        match elem {
            Elem::F32 => data.extend(
                buf[..n]
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])),
            ),
            Elem::F64 => data.extend(
                buf[..n]
                    .chunks_exact(8)
                    .map(|c| f64::from_le_bytes(c.try_into().expect("chunks of 8")) as f32),
            ),
        }
        left -= n;
    }
    Ok(Embeddings { rows, dim, data })
}

/// Parses the header dict: `{'descr': '<f4', 'fortran_order': False, 'shape': (N, D), }`.
fn parse_npy_header(h: &str) -> std::result::Result<(Elem, usize, usize), String> {
    let value = |key: &str| -> std::result::Result<&str, String> {
        let at = h
            .find(&format!("'{key}'"))
            .ok_or(format!("header has no '{key}'"))?;
        let rest = h[at + key.len() + 2..].trim_start();
        Ok(rest
            .strip_prefix(':')
            .ok_or(format!("malformed header near '{key}'"))?
            .trim_start())
    };
    let descr = value("descr")?;
    let elem = if descr.starts_with("'<f4'") || descr.starts_with("'=f4'") {
        Elem::F32
    } else if descr.starts_with("'<f8'") || descr.starts_with("'=f8'") {
        Elem::F64
    } else {
        let d = descr.split(',').next().unwrap_or(descr);
        return Err(format!(
            "dtype {d} (expected little-endian float32 '<f4' or float64 '<f8')"
        ));
    };
    if value("fortran_order")?.starts_with("True") {
        return Err("Fortran-order arrays are not supported (save with C order)".into());
    }
    let shape = value("shape")?;
    let inner = shape
        .strip_prefix('(')
        .and_then(|s| s.split_once(')'))
        .ok_or("malformed shape")?
        .0;
    let dims: Vec<usize> = inner
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().map_err(|_| format!("malformed shape ({inner})")))
        .collect::<std::result::Result<_, _>>()?;
    match dims[..] {
        [rows, dim] => Ok((elem, rows, dim)),
        _ => Err(format!("shape ({inner}) is not 2-D (expected N x D)")),
    }
}

/// Reads the tensor `embeddings` (F32, F64, F16 or BF16, N x D) of a safetensors file.
fn load_safetensors(path: &Path) -> Result<Embeddings> {
    use safetensors::{Dtype, SafeTensors};
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let st = SafeTensors::deserialize(&bytes)
        .map_err(|e| bad(path, format!("neither a .npy nor a safetensors file ({e})")))?;
    let view = st
        .tensor("embeddings")
        .map_err(|_| bad(path, "safetensors file has no tensor 'embeddings'"))?;
    let (rows, dim) = match view.shape() {
        [r, d] => (*r, *d),
        s => {
            return Err(Error::Shape {
                name: format!("{}: embeddings", path.display()),
                expected: vec![0, 0],
                found: s.to_vec(),
            })
        }
    };
    let raw = view.data();
    let data: Vec<f32> = match view.dtype() {
        Dtype::F32 => raw
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        Dtype::F64 => raw
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes(c.try_into().expect("chunks of 8")) as f32)
            .collect(),
        Dtype::F16 => raw
            .chunks_exact(2)
            .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        Dtype::BF16 => raw
            .chunks_exact(2)
            .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        d => {
            return Err(bad(
                path,
                format!("tensor 'embeddings' has dtype {d:?} (expected a float type)"),
            ))
        }
    };
    Ok(Embeddings { rows, dim, data })
}

/// Reads one id per line (blank lines are errors); there must be exactly `rows` of them.
pub fn load_ids(path: &Path, rows: usize) -> Result<Vec<String>> {
    let text = crate::textfile::read_list(path)?;
    let ids: Vec<String> = text
        .lines()
        .map(|l| l.trim_end_matches('\r').to_string())
        .collect();
    if let Some(i) = ids.iter().position(|s| s.trim().is_empty()) {
        return Err(bad(path, format!("line {} is empty", i + 1)));
    }
    if ids.len() != rows {
        return Err(bad(
            path,
            format!("{} ids for {rows} embedding rows", ids.len()),
        ));
    }
    Ok(ids)
}

/// Writes `data` (rows x dim) as a version-1 `.npy` float32 file, atomically; used to export
/// embeddings and by tests.
pub fn save_npy(path: &Path, rows: usize, dim: usize, data: &[f32]) -> Result<()> {
    if data.len() != rows * dim {
        return Err(Error::invalid(
            "npy data",
            format!("{} values for shape ({rows}, {dim})", data.len()),
        ));
    }
    let mut header =
        format!("{{'descr': '<f4', 'fortran_order': False, 'shape': ({rows}, {dim}), }}");
    // Magic (6) + version (2) + length (2) + header + newline is a multiple of 64.
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut bytes = Vec::with_capacity(10 + header.len() + data.len() * 4);
    bytes.extend_from_slice(b"\x93NUMPY\x01\x00");
    bytes.extend_from_slice(&(header.len() as u16).to_le_bytes());
    bytes.extend_from_slice(header.as_bytes());
    for v in data {
        bytes.extend_from_slice(&v.to_le_bytes());
    }
    crate::output::write(path, &bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn npy_round_trips_and_parses_numpy_headers() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("e.npy");
        let data: Vec<f32> = (0..12).map(|i| i as f32 * 0.5).collect();
        save_npy(&p, 3, 4, &data).unwrap();
        let e = load(&p).unwrap();
        assert_eq!((e.rows, e.dim), (3, 4));
        assert_eq!(e.data, data);
        assert_eq!(e.row(2), &data[8..12]);

        let (_, r, d) =
            parse_npy_header("{'descr': '<f8', 'fortran_order': False, 'shape': (1000, 768), }")
                .unwrap();
        assert_eq!((r, d), (1000, 768));
        assert!(
            parse_npy_header("{'descr': '<i8', 'fortran_order': False, 'shape': (2, 3), }")
                .unwrap_err()
                .contains("<i8")
        );
        assert!(
            parse_npy_header("{'descr': '<f4', 'fortran_order': False, 'shape': (5,), }")
                .unwrap_err()
                .contains("not 2-D")
        );
    }

    #[test]
    fn truncated_and_foreign_files_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("cut.npy");
        save_npy(&p, 4, 4, &[1.0; 16]).unwrap();
        let bytes = std::fs::read(&p).unwrap();
        std::fs::write(&p, &bytes[..bytes.len() - 5]).unwrap();
        let msg = load(&p).unwrap_err().to_string();
        assert!(
            msg.contains("cut.npy") && msg.contains("truncated"),
            "{msg}"
        );

        let q = dir.path().join("text.npy");
        std::fs::write(&q, "hello").unwrap();
        let msg = load(&q).unwrap_err().to_string();
        assert!(msg.contains("text.npy"), "{msg}");
    }

    #[test]
    fn safetensors_embeddings_in_half_precision() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("e.safetensors");
        let vals: Vec<u8> = [1.0f32, -2.0, 0.5, 4.0]
            .iter()
            .flat_map(|v| half::f16::from_f32(*v).to_le_bytes())
            .collect();
        let view = safetensors::tensor::TensorView::new(safetensors::Dtype::F16, vec![2, 2], &vals)
            .unwrap();
        safetensors::serialize_to_file([("embeddings", view)], None, &p).unwrap();
        let e = load(&p).unwrap();
        assert_eq!(
            (e.rows, e.dim, e.data.clone()),
            (2, 2, vec![1.0, -2.0, 0.5, 4.0])
        );

        let view = safetensors::tensor::TensorView::new(safetensors::Dtype::F16, vec![2, 2], &vals)
            .unwrap();
        safetensors::serialize_to_file([("other", view)], None, &p).unwrap();
        assert!(load(&p)
            .unwrap_err()
            .to_string()
            .contains("no tensor 'embeddings'"));
    }

    #[test]
    fn ids_must_match_the_rows() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("ids.txt");
        std::fs::write(&p, "a.png\nb.png\n").unwrap();
        assert_eq!(load_ids(&p, 2).unwrap(), vec!["a.png", "b.png"]);
        assert!(load_ids(&p, 3)
            .unwrap_err()
            .to_string()
            .contains("2 ids for 3"));
    }

    #[test]
    fn normalize_gives_unit_rows() {
        let mut e = Embeddings {
            rows: 2,
            dim: 2,
            data: vec![3.0, 4.0, 0.0, 0.0],
        };
        e.normalize();
        assert_eq!(e.data, vec![0.6, 0.8, 0.0, 0.0]);
    }
}
