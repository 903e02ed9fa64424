//! Writes a state dict as PyTorch's `torch.save` does (a zip of uncompressed entries with a
//! pickled `OrderedDict` of `_rebuild_tensor_v2` calls, one storage file per tensor), so that
//! the benches can build checkpoints in the official release layout (`.pth`, `.bin`) without
//! Python. Only what `torch.load` and ace's reader need: contiguous f32, f16 and bf16 tensors.

use candle_core::DType;
use std::io::Write;
use std::path::Path;

/// Pickle protocol 2 opcodes used here.
mod op {
    pub const PROTO: u8 = 0x80;
    pub const GLOBAL: u8 = b'c';
    pub const EMPTY_TUPLE: u8 = b')';
    pub const REDUCE: u8 = b'R';
    pub const MARK: u8 = b'(';
    pub const TUPLE: u8 = b't';
    pub const BINUNICODE: u8 = b'X';
    pub const BININT: u8 = b'J';
    pub const LONG1: u8 = 0x8a;
    pub const BINPERSID: u8 = b'Q';
    pub const NEWFALSE: u8 = 0x89;
    pub const SETITEMS: u8 = b'u';
    pub const STOP: u8 = b'.';
}

struct Pickle(Vec<u8>);

impl Pickle {
    fn global(&mut self, module: &str, name: &str) {
        self.0.push(op::GLOBAL);
        self.0
            .extend_from_slice(format!("{module}\n{name}\n").as_bytes());
    }
    fn string(&mut self, s: &str) {
        self.0.push(op::BINUNICODE);
        self.0.extend_from_slice(&(s.len() as u32).to_le_bytes());
        self.0.extend_from_slice(s.as_bytes());
    }
    fn int(&mut self, v: usize) {
        if let Ok(small) = i32::try_from(v) {
            self.0.push(op::BININT);
            self.0.extend_from_slice(&small.to_le_bytes());
        } else {
            self.0.push(op::LONG1);
            self.0.push(8);
            self.0.extend_from_slice(&(v as i64).to_le_bytes());
        }
    }
    fn tuple_of_ints(&mut self, values: &[usize]) {
        self.0.push(op::MARK);
        for &v in values {
            self.int(v);
        }
        self.0.push(op::TUPLE);
    }
}

/// One tensor to write: its name, dtype, shape and little-endian bytes.
pub struct Entry<'a> {
    pub name: &'a str,
    pub dtype: DType,
    pub shape: &'a [usize],
    pub bytes: &'a [u8],
}

fn storage_class(dtype: DType) -> &'static str {
    match dtype {
        DType::F32 => "FloatStorage",
        DType::F16 => "HalfStorage",
        DType::BF16 => "BFloat16Storage",
        other => panic!("no torch storage for {other:?} in the bench writer"),
    }
}

/// Writes `entries` to `path` as a torch zip checkpoint whose top level is the state dict.
pub fn save(path: &Path, entries: &[Entry]) -> anyhow::Result<()> {
    let archive = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "archive".into());
    let mut p = Pickle(vec![op::PROTO, 2]);
    p.global("collections", "OrderedDict");
    p.0.push(op::EMPTY_TUPLE);
    p.0.push(op::REDUCE);
    p.0.push(op::MARK);
    for (key, e) in entries.iter().enumerate() {
        p.string(e.name);
        p.global("torch._utils", "_rebuild_tensor_v2");
        p.0.push(op::MARK);
        // The persistent id of the storage: ('storage', class, key, location, numel).
        p.0.push(op::MARK);
        p.string("storage");
        p.global("torch", storage_class(e.dtype));
        p.string(&key.to_string());
        p.string("cpu");
        p.int(e.shape.iter().product());
        p.0.push(op::TUPLE);
        p.0.push(op::BINPERSID);
        p.int(0);
        p.tuple_of_ints(e.shape);
        let mut stride = vec![1usize; e.shape.len()];
        for i in (0..e.shape.len().saturating_sub(1)).rev() {
            stride[i] = stride[i + 1] * e.shape[i + 1];
        }
        p.tuple_of_ints(&stride);
        p.0.push(op::NEWFALSE);
        p.global("collections", "OrderedDict");
        p.0.push(op::EMPTY_TUPLE);
        p.0.push(op::REDUCE);
        p.0.push(op::TUPLE);
        p.0.push(op::REDUCE);
    }
    p.0.push(op::SETITEMS);
    p.0.push(op::STOP);

    let file = std::fs::File::create(path)?;
    let mut zip = zip::ZipWriter::new(std::io::BufWriter::new(file));
    let stored = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Stored)
        .large_file(true)
        .with_alignment(64);
    zip.start_file(format!("{archive}/data.pkl"), stored)?;
    zip.write_all(&p.0)?;
    zip.start_file(format!("{archive}/byteorder"), stored)?;
    zip.write_all(b"little")?;
    for (key, e) in entries.iter().enumerate() {
        zip.start_file(format!("{archive}/data/{key}"), stored)?;
        zip.write_all(e.bytes)?;
    }
    zip.start_file(format!("{archive}/version"), stored)?;
    zip.write_all(b"3\n")?;
    zip.finish()?.flush()?;
    Ok(())
}
