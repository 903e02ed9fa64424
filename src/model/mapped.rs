//! Checkpoint tensors read in place from memory-mapped files. The T5-XXL encoder alone is 9 GB
//! in bf16: copying it into memory, or widening it to f32 as a whole (18 GB), does not fit an
//! ordinary machine. A [`MappedTensor`] is a tensor's bytes where the file holds them
//! (safetensors, or the uncompressed entries of a torch zip pickle): it is turned into a candle
//! tensor of the compute dtype only when a layer needs it, and its pages can be handed back
//! to the page cache once the layer has run ([`MappedTensor::release`]), so a model can stream
//! through its weights layer by layer. Loading a whole checkpoint goes the same way, one
//! tensor at a time, so the weights exist once in memory and never twice.

use crate::{Error, Result};
use candle_core::{DType, Device, Shape, Tensor};
use memmap2::{Advice, Mmap, UncheckedAdvice};
use rayon::prelude::*;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// One mapped weight file.
#[derive(Debug)]
struct MappedFile {
    path: PathBuf,
    map: Mmap,
}

/// Where a tensor's values are.
#[derive(Debug, Clone)]
enum Storage {
    /// `len` bytes at `offset` of a mapped file, row-major, little-endian.
    Mapped {
        file: Arc<MappedFile>,
        offset: usize,
        len: usize,
    },
    /// A tensor the mapping cannot describe (a strided view inside a torch storage, a
    /// compressed zip entry), read into memory when the file was opened.
    Loaded(Tensor),
}

/// A tensor of a checkpoint, not yet read.
#[derive(Debug, Clone)]
pub struct MappedTensor {
    name: String,
    dtype: DType,
    shape: Vec<usize>,
    storage: Storage,
}

impl MappedTensor {
    /// The name the checkpoint gives it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The dtype it is stored in.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// Bytes of its values as stored.
    pub fn byte_len(&self) -> usize {
        self.shape.iter().product::<usize>() * self.dtype.size_in_bytes()
    }

    /// The file it is stored in, for messages.
    pub fn source(&self) -> Option<&Path> {
        match &self.storage {
            Storage::Mapped { file, .. } => Some(&file.path),
            Storage::Loaded(_) => None,
        }
    }

    /// The tensor as a `dtype` tensor on `device`. bf16 and f16 widen to f32 in parallel
    /// straight from the mapped bytes, without a half-precision copy in between.
    pub fn load(&self, device: &Device, dtype: DType) -> Result<Tensor> {
        let t = match &self.storage {
            Storage::Loaded(t) => t.to_dtype(dtype)?.to_device(device)?,
            Storage::Mapped { file, offset, len } => {
                let bytes = &file.map[*offset..*offset + *len];
                let shape = Shape::from_dims(&self.shape);
                match (self.dtype, dtype) {
                    (DType::BF16, DType::F32) => {
                        let values = widen(bytes, |b| half::bf16::from_bits(b).to_f32());
                        Tensor::from_vec(values, shape, &Device::Cpu)?.to_device(device)?
                    }
                    (DType::F16, DType::F32) => {
                        let values = widen(bytes, |b| half::f16::from_bits(b).to_f32());
                        Tensor::from_vec(values, shape, &Device::Cpu)?.to_device(device)?
                    }
                    (stored, _) => Tensor::from_raw_buffer(bytes, stored, &self.shape, device)?
                        .to_dtype(dtype)?,
                }
            }
        };
        Ok(t)
    }

    /// Rows `ids` of a matrix as `[ids.len(), columns]` f32 on `device`, reading only those
    /// rows (an embedding lookup that leaves the rest of a large table on disk).
    pub fn rows(&self, ids: &[u32], device: &Device) -> Result<Tensor> {
        let &[n_rows, columns] = self.shape.as_slice() else {
            return Err(self.error(format!("expected a matrix, found shape {:?}", self.shape)));
        };
        if let Some(bad) = ids.iter().find(|&&i| i as usize >= n_rows) {
            return Err(self.error(format!("row {bad} asked for, the table has {n_rows}")));
        }
        let (file, offset) = match &self.storage {
            Storage::Mapped { file, offset, .. } => (file, *offset),
            Storage::Loaded(t) => {
                let idx = Tensor::new(ids, t.device())?;
                let rows = t.index_select(&idx, 0)?.to_dtype(DType::F32)?;
                return Ok(rows.to_device(device)?);
            }
        };
        let row_bytes = columns * self.dtype.size_in_bytes();
        let mut bytes = Vec::with_capacity(ids.len() * row_bytes);
        for &i in ids {
            let start = offset + i as usize * row_bytes;
            bytes.extend_from_slice(&file.map[start..start + row_bytes]);
        }
        let rows =
            Tensor::from_raw_buffer(&bytes, self.dtype, &[ids.len(), columns], &Device::Cpu)?;
        Ok(rows.to_dtype(DType::F32)?.to_device(device)?)
    }

    /// Rows `start..end` of a matrix widened to f32 into `out` (`(end - start) * columns`
    /// values), for products that read a large weight a block at a time.
    pub fn rows_into(&self, start: usize, end: usize, out: &mut [f32]) -> Result<()> {
        let columns = self.check_rows(start, end, out.len())?;
        match &self.storage {
            Storage::Loaded(t) => {
                let rows = t.narrow(0, start, end - start)?.to_dtype(DType::F32)?;
                out.copy_from_slice(&rows.flatten_all()?.to_vec1::<f32>()?);
            }
            Storage::Mapped { file, offset, .. } => {
                let size = self.dtype.size_in_bytes();
                let at = offset + start * columns * size;
                let bytes = &file.map[at..at + out.len() * size];
                match self.dtype {
                    DType::F32 => {
                        for (d, s) in out.iter_mut().zip(bytes.chunks_exact(4)) {
                            *d = f32::from_le_bytes([s[0], s[1], s[2], s[3]]);
                        }
                    }
                    DType::BF16 | DType::F16 => {
                        let bf16 = self.dtype == DType::BF16;
                        for (d, s) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                            let bits = u16::from_le_bytes([s[0], s[1]]);
                            *d = if bf16 {
                                half::bf16::from_bits(bits).to_f32()
                            } else {
                                half::f16::from_bits(bits).to_f32()
                            };
                        }
                    }
                    other => return Err(self.error(format!("cannot widen {other:?} rows to f32"))),
                }
            }
        }
        Ok(())
    }

    /// Rows `start..end` of a matrix in bf16 into `out`, for the bf16 products: as the file
    /// holds them when it holds bf16, else widened to f32 and rounded to nearest even.
    pub fn rows_into_bf16(&self, start: usize, end: usize, out: &mut [half::bf16]) -> Result<()> {
        if let (DType::BF16, Storage::Mapped { file, offset, .. }) = (self.dtype, &self.storage) {
            let columns = self.check_rows(start, end, out.len())?;
            let at = offset + start * columns * 2;
            let bytes = &file.map[at..at + out.len() * 2];
            for (d, s) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                *d = half::bf16::from_bits(u16::from_le_bytes([s[0], s[1]]));
            }
            return Ok(());
        }
        let mut wide = vec![0f32; out.len()];
        self.rows_into(start, end, &mut wide)?;
        for (d, v) in out.iter_mut().zip(&wide) {
            *d = half::bf16::from_f32(*v);
        }
        Ok(())
    }

    /// The number of columns of this matrix, once rows `start..end` are known to be `values`
    /// values of it.
    fn check_rows(&self, start: usize, end: usize, values: usize) -> Result<usize> {
        let &[n_rows, columns] = self.shape.as_slice() else {
            return Err(self.error(format!("expected a matrix, found shape {:?}", self.shape)));
        };
        if start > end || end > n_rows || values != (end - start) * columns {
            return Err(self.error(format!(
                "rows {start}..{end} into {values} values of a {n_rows}x{columns} matrix"
            )));
        }
        Ok(columns)
    }

    /// Drops this tensor's pages from the process's memory (the kernel's page cache keeps
    /// them, and the next access reads them again), for weights that are done with.
    pub fn release(&self) {
        if let Some((file, start, len)) = self.pages() {
            // SAFETY: MADV_DONTNEED on a read-only shared file mapping only drops the page
            // table entries; the next access faults the same bytes in again from the file,
            // which ace never writes while it is mapped. No reference sees different data.
            let _ = unsafe {
                file.map
                    .unchecked_advise_range(UncheckedAdvice::DontNeed, start, len)
            };
        }
    }

    /// Asks the kernel to start reading this tensor's pages (for the next layer, while the
    /// current one computes).
    pub fn prefetch(&self) {
        if let Some((file, start, len)) = self.pages() {
            let _ = file.map.advise_range(Advice::WillNeed, start, len);
        }
    }

    /// The whole pages inside this tensor's bytes: `(file, offset, length)`.
    fn pages(&self) -> Option<(&MappedFile, usize, usize)> {
        let Storage::Mapped { file, offset, len } = &self.storage else {
            return None;
        };
        let page = page_size();
        let start = offset.div_ceil(page) * page;
        let end = (offset + len) / page * page;
        (end > start).then(|| (file.as_ref(), start, end - start))
    }

    fn error(&self, message: String) -> Error {
        Error::Model {
            path: self
                .source()
                .map_or_else(|| PathBuf::from(&self.name), Path::to_path_buf),
            message: format!("tensor {}: {message}", self.name),
        }
    }
}

fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(size).unwrap_or(4096).max(1)
}

/// Little-endian 16-bit floats (bit patterns `to_f32` reads) widened to f32, in parallel
/// chunks.
fn widen(bytes: &[u8], to_f32: impl Fn(u16) -> f32 + Sync) -> Vec<f32> {
    const CHUNK: usize = 1 << 16;
    let mut out = vec![0f32; bytes.len() / 2];
    out.par_chunks_mut(CHUNK)
        .zip(bytes.par_chunks(2 * CHUNK))
        .for_each(|(dst, src)| {
            for (d, s) in dst.iter_mut().zip(src.chunks_exact(2)) {
                *d = to_f32(u16::from_le_bytes([s[0], s[1]]));
            }
        });
    out
}

/// Opens every tensor of a checkpoint file or Hugging Face folder (see
/// [`super::checkpoint::weight_files`]) without reading their values.
pub fn open(path: &Path) -> Result<Vec<MappedTensor>> {
    let mut out = Vec::new();
    for file in super::checkpoint::weight_files(path)? {
        if super::checkpoint::is_safetensors(&file) {
            out.extend(open_safetensors(&file)?);
        } else {
            out.extend(open_torch(&file)?);
        }
    }
    Ok(out)
}

fn map_file(path: &Path) -> Result<Arc<MappedFile>> {
    let f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    // SAFETY: the file is mapped read-only; ace does not write checkpoints it is reading.
    let map = unsafe { Mmap::map(&f) }.map_err(|e| Error::io(path, e))?;
    Ok(Arc::new(MappedFile {
        path: path.to_path_buf(),
        map,
    }))
}

fn open_safetensors(path: &Path) -> Result<Vec<MappedTensor>> {
    let bad = |message: String| Error::Model {
        path: path.to_path_buf(),
        message,
    };
    let file = map_file(path)?;
    let (header, meta) = safetensors::SafeTensors::read_metadata(&file.map)
        .map_err(|e| bad(format!("cannot read safetensors: {e:?}")))?;
    let data_start = 8 + header;
    let mut out = Vec::new();
    for (name, info) in meta.tensors() {
        let dtype = DType::try_from(info.dtype).map_err(|e| bad(format!("tensor {name}: {e}")))?;
        let (begin, end) = info.data_offsets;
        let want = info.shape.iter().product::<usize>() * dtype.size_in_bytes();
        if end < begin || end - begin != want || data_start + end > file.map.len() {
            return Err(bad(format!(
                "tensor {name}: its bytes {begin}..{end} do not hold shape {:?} of {dtype:?} \
                 (the file is truncated or corrupt)",
                info.shape
            )));
        }
        out.push(MappedTensor {
            name,
            dtype,
            shape: info.shape.clone(),
            storage: Storage::Mapped {
                file: file.clone(),
                offset: data_start + begin,
                len: want,
            },
        });
    }
    Ok(out)
}

/// A torch zip pickle, read as data only (candle's reader, which executes no pickle code). Its
/// storages are uncompressed zip entries, mapped where they lie; a tensor that is a strided
/// view of its storage, or an entry that is compressed, is read into memory instead.
fn open_torch(path: &Path) -> Result<Vec<MappedTensor>> {
    let bad = |e: &dyn std::fmt::Display| Error::Model {
        path: path.to_path_buf(),
        message: format!("cannot read torch checkpoint: {e}"),
    };
    let mut key = None;
    let mut infos =
        candle_core::pickle::read_pth_tensor_info(path, false, key).map_err(|e| bad(&e))?;
    if infos.is_empty() {
        key = Some("state_dict");
        infos = candle_core::pickle::read_pth_tensor_info(path, false, key).map_err(|e| bad(&e))?;
    }
    if infos.is_empty() {
        return Err(Error::Model {
            path: path.to_path_buf(),
            message: "torch checkpoint holds no tensors".into(),
        });
    }
    let file = map_file(path)?;
    let reader = std::io::Cursor::new(&file.map[..]);
    let mut zip = zip::ZipArchive::new(reader).map_err(|e| bad(&e))?;
    let mut slow: Option<candle_core::pickle::PthTensors> = None;
    let mut out = Vec::with_capacity(infos.len());
    for info in infos {
        let entry = zip.by_name(&info.path).map_err(|e| bad(&e))?;
        let in_place =
            entry.compression() == zip::CompressionMethod::Stored && info.layout.is_contiguous();
        let dims = info.layout.dims().to_vec();
        let len = dims.iter().product::<usize>() * info.dtype.size_in_bytes();
        // candle records the start of a view inside its storage in bytes.
        let skip = info.layout.start_offset();
        let storage = match entry.data_start() {
            Some(start) if in_place && skip + len <= entry.size() as usize => Storage::Mapped {
                file: file.clone(),
                offset: start as usize + skip,
                len,
            },
            _ => {
                drop(entry);
                if slow.is_none() {
                    slow =
                        Some(candle_core::pickle::PthTensors::new(path, key).map_err(|e| bad(&e))?);
                }
                let reader = slow.as_ref().expect("opened just above");
                let t = reader
                    .get(&info.name)
                    .map_err(|e| bad(&e))?
                    .ok_or_else(|| bad(&format!("tensor {} vanished", info.name)))?;
                Storage::Loaded(t)
            }
        };
        out.push(MappedTensor {
            name: info.name,
            dtype: info.dtype,
            shape: dims,
            storage,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn fixture(rel: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/ace-tiny/model/models")
            .join(rel)
    }

    fn by_name(v: Vec<MappedTensor>) -> HashMap<String, MappedTensor> {
        v.into_iter().map(|t| (t.name.clone(), t)).collect()
    }

    #[test]
    fn mapped_tensors_equal_candles_own_reading() {
        for rel in ["dit/ace_tiny.pth", "vae/vae.bin", "text_encoder/t5-tiny"] {
            let mapped = by_name(open(&fixture(rel)).unwrap());
            let path = fixture(rel);
            let want: HashMap<String, Tensor> = if rel.ends_with("t5-tiny") {
                candle_core::safetensors::load(path.join("model.safetensors"), &Device::Cpu)
                    .unwrap()
            } else {
                candle_core::pickle::read_all_with_key(&path, None)
                    .unwrap()
                    .into_iter()
                    .collect()
            };
            assert_eq!(mapped.len(), want.len(), "{rel}");
            for (name, w) in &want {
                let m = &mapped[name];
                assert!(
                    matches!(m.storage, Storage::Mapped { .. }),
                    "{rel}: {name} mapped"
                );
                let got = m.load(&Device::Cpu, w.dtype()).unwrap();
                assert_eq!(got.dims(), w.dims(), "{name}");
                let diff = (got.to_dtype(DType::F64).unwrap() - w.to_dtype(DType::F64).unwrap())
                    .unwrap()
                    .abs()
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .max(0)
                    .unwrap()
                    .to_scalar::<f64>()
                    .unwrap();
                assert_eq!(diff, 0.0, "{rel}: {name}");
                m.release();
            }
        }
    }

    #[test]
    fn half_precision_widens_exactly_and_rows_read_alone_in_f32_or_bf16() {
        let dir = tempfile::tempdir().unwrap();
        let dev = Device::Cpu;
        let values = Tensor::new(&[[1.5f32, -2.0, 3.25], [0.1, 1e-3, -7.0e4]], &dev).unwrap();
        let path = dir.path().join("w.safetensors");
        let tensors = HashMap::from([
            ("bf".to_string(), values.to_dtype(DType::BF16).unwrap()),
            ("h".to_string(), values.to_dtype(DType::F16).unwrap()),
        ]);
        candle_core::safetensors::save(&tensors, &path).unwrap();
        let mapped = by_name(open(&path).unwrap());
        for (name, stored) in &tensors {
            let want = stored
                .to_dtype(DType::F32)
                .unwrap()
                .to_vec2::<f32>()
                .unwrap();
            let m = &mapped[name];
            assert_eq!(m.dtype(), stored.dtype());
            let got = m.load(&dev, DType::F32).unwrap().to_vec2::<f32>().unwrap();
            assert_eq!(got, want, "{name}");
            let row = m.rows(&[1, 0, 1], &dev).unwrap().to_vec2::<f32>().unwrap();
            assert_eq!(row, vec![want[1].clone(), want[0].clone(), want[1].clone()]);
            let mut second = vec![0f32; 3];
            m.rows_into(1, 2, &mut second).unwrap();
            assert_eq!(second, want[1]);
            assert!(m.rows_into(1, 3, &mut second).is_err());
            // In bf16: the stored bits, or the f16 values rounded.
            let mut second = vec![half::bf16::ZERO; 3];
            m.rows_into_bf16(1, 2, &mut second).unwrap();
            let want_bf16: Vec<half::bf16> =
                want[1].iter().map(|&v| half::bf16::from_f32(v)).collect();
            assert_eq!(second, want_bf16, "{name}");
            assert!(m.rows_into_bf16(0, 2, &mut second).is_err());
            let err = m.rows(&[2], &dev).unwrap_err().to_string();
            assert!(
                err.contains("row 2") && err.contains("w.safetensors"),
                "{err}"
            );
            // Released pages read back the same values.
            m.release();
            assert_eq!(
                m.load(&dev, DType::F32).unwrap().to_vec2::<f32>().unwrap(),
                want
            );
        }
    }

    #[test]
    fn truncated_safetensors_are_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.safetensors");
        let t = Tensor::ones((64, 64), DType::F32, &Device::Cpu).unwrap();
        candle_core::safetensors::save(&HashMap::from([("w".to_string(), t)]), &path).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() - 100]).unwrap();
        let err = open(&path).unwrap_err().to_string();
        assert!(err.contains("t.safetensors"), "{err}");
    }
}
