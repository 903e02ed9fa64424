//! Gradients of trained weights gathered in place, as PyTorch keeps `param.grad`. candle's
//! backward pass hands each gradient to a fresh tensor: zeros of the weight's shape, then the
//! op's gradient added onto them, on one thread. For the linear layers of the full-size DiT
//! that is 2.3 GiB zeroed, read and written again every step (a tenth of a training step). A
//! weight registered here instead has the products of the linear layer's backward pass write
//! its gradient straight into one buffer (added onto it when the weight is used again), and
//! the training code takes the buffer once the backward pass is done.

use candle_core::{Device, Result, Shape, Tensor, TensorId};
use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex, MutexGuard, Weak};

/// Where the gradient of one registered weight gathers during a backward pass.
#[derive(Debug)]
pub struct GradBuffer {
    dims: Vec<usize>,
    values: Mutex<Option<Vec<f32>>>,
}

/// The registered weights by tensor id; a buffer goes when its owner drops it.
static REGISTERED: LazyLock<Mutex<HashMap<TensorId, Weak<GradBuffer>>>> =
    LazyLock::new(Default::default);

fn registered() -> MutexGuard<'static, HashMap<TensorId, Weak<GradBuffer>>> {
    // A panic while holding the map leaves it consistent (single inserts and removals).
    REGISTERED.lock().unwrap_or_else(|e| e.into_inner())
}

/// Gathers the gradient of `weight` (this very tensor: a `Var`'s) in the returned buffer from
/// now on, wherever a kernel with a backward pass of its own computes it (the f32 CPU linear
/// layer); elsewhere it still goes to candle's gradient store.
pub fn register(weight: &Tensor) -> Arc<GradBuffer> {
    let buffer = Arc::new(GradBuffer {
        dims: weight.dims().to_vec(),
        values: Mutex::new(None),
    });
    let mut map = registered();
    map.retain(|_, b| b.strong_count() > 0);
    map.insert(weight.id(), Arc::downgrade(&buffer));
    buffer
}

/// The gradient of a parameter of `shape` that `write(values, accumulate)` writes: into
/// `buffer` when the parameter is registered (and `None` comes back), else into a new tensor.
pub(crate) fn gradient(
    buffer: Option<&Arc<GradBuffer>>,
    shape: &Shape,
    device: &Device,
    write: impl FnOnce(&mut [f32], bool) -> Result<()>,
) -> Result<Option<Tensor>> {
    match buffer {
        Some(buffer) => buffer.add(write).map(|()| None),
        None => {
            let mut values = vec![0f32; shape.elem_count()];
            write(&mut values, false)?;
            Tensor::from_vec(values, shape, device).map(Some)
        }
    }
}

/// The buffer of `t` when it is a registered weight.
pub(crate) fn buffer_of(t: &Tensor) -> Option<Arc<GradBuffer>> {
    registered().get(&t.id()).and_then(Weak::upgrade)
}

impl GradBuffer {
    /// Adds a gradient: `write(values, accumulate)` writes it into the buffer's values, over
    /// them for the first gradient since the last [`GradBuffer::take`] (`accumulate` false:
    /// nothing there to keep), onto them after.
    pub(crate) fn add(&self, write: impl FnOnce(&mut [f32], bool) -> Result<()>) -> Result<()> {
        let mut values = self.values.lock().unwrap_or_else(|e| e.into_inner());
        match values.as_mut() {
            Some(v) => write(v, true),
            None => {
                let mut v = vec![0f32; self.dims.iter().product()];
                write(&mut v, false)?;
                *values = Some(v);
                Ok(())
            }
        }
    }

    /// The gradient gathered since the last take, `None` when none came; the buffer is empty
    /// after.
    pub fn take(&self, device: &Device) -> Result<Option<Tensor>> {
        let values = self.values.lock().unwrap_or_else(|e| e.into_inner()).take();
        values
            .map(|v| Tensor::from_vec(v, self.dims.as_slice(), device))
            .transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_buffer_belongs_to_its_tensor_while_it_lives() {
        let dev = Device::Cpu;
        let w = Tensor::zeros((2, 3), candle_core::DType::F32, &dev).unwrap();
        let other = w.copy().unwrap();
        let buffer = register(&w);
        assert!(buffer_of(&other).is_none());
        let found = buffer_of(&w).unwrap();
        found
            .add(|v, accumulate| {
                assert!(!accumulate);
                v.fill(1.0);
                Ok(())
            })
            .unwrap();
        found
            .add(|v, accumulate| {
                assert!(accumulate);
                v[0] += 1.0;
                Ok(())
            })
            .unwrap();
        let g = buffer.take(&dev).unwrap().unwrap();
        assert_eq!(
            g.to_vec2::<f32>().unwrap(),
            [[2.0, 1.0, 1.0], [1.0, 1.0, 1.0]]
        );
        assert!(buffer.take(&dev).unwrap().is_none());
        drop((buffer, found));
        assert!(buffer_of(&w).is_none());
    }
}
